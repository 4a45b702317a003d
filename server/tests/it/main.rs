//! Integration tests of the server, against real PostgreSQL and Redis (one database and one
//! Redis namespace per test). `make test` starts the services and installs grpcurl.

mod admin;
mod backpressure;
mod certs;
mod cluster;
mod connections;
mod create_user;
mod e2e;
mod email;
mod health;
mod helpers;
mod logs;
mod malformed;
mod metrics;
mod outbox;
mod pipeline;
mod postgres_tls;
mod redis_acl;
mod redis_tls;
mod sessions;
mod signin;
mod startup;
mod stores;
mod tls;
mod traces;
