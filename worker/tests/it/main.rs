//! Integration tests of the worker, against real PostgreSQL and Redis (one database and one
//! Redis namespace per test).

mod acl;
mod binary;
mod cluster;
mod consumer_group;
mod delayed;
mod faults;
mod helpers;
mod lease;
mod metrics;
mod priority;
mod reclaim;
mod retries;
mod runners;
mod send_verify_email;
mod shutdown;
mod uniqueness;
