//! `list_workers`: the consumers of the group [`GROUP`] on each registered queue's stream
//! (`XINFO CONSUMERS`, one pipeline per queue), merged by name. A worker joins the group on
//! every stream it serves as it starts, so it is listed before it has read anything; a
//! stopped worker stays listed until an operator deletes it (`XGROUP DELCONSUMER`).

use std::{collections::BTreeMap, time::Duration};

use redis::streams::StreamInfoConsumersReply;

use super::{Admin, AdminError};
use crate::keys::{GROUP, QueueName};

/// One consumer of the group, over all the queues it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The consumer name.
    pub name: String,
    /// The host, when the name has the default form `<host>-<pid>`.
    pub host: Option<String>,
    /// The process id, when the name has the default form `<host>-<pid>`.
    pub pid: Option<u32>,
    /// Tasks delivered to it and not yet settled, over all queues.
    pub tasks_held: u64,
    /// Since its last read, claim or renewal on any queue.
    pub idle: Duration,
    /// The queues it joined, by name.
    pub queues: Vec<QueueName>,
}

/// `(host, pid)` of a name of the default form `<host>-<pid>`. A name an operator chose in the
/// same shape (`mail-3`) reads the same way: the name alone cannot tell them apart.
pub(super) fn host_pid(name: &str) -> Option<(String, u32)> {
    let (host, pid) = name.rsplit_once('-')?;
    let pid: u32 = pid.parse().ok()?;
    (!host.is_empty() && pid > 0).then(|| (host.to_owned(), pid))
}

pub(super) async fn list(
    admin: &Admin,
    queues: &[QueueName],
) -> Result<Vec<WorkerInfo>, AdminError> {
    let mut workers: BTreeMap<String, WorkerInfo> = BTreeMap::new();
    for queue in queues {
        let reply: Result<StreamInfoConsumersReply, _> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(admin.keys.stream(queue))
            .arg(GROUP)
            .query_async(&mut admin.conn())
            .await;
        let consumers = match reply {
            Ok(reply) => reply.consumers,
            // No stream or no group yet: nobody joined.
            Err(err) if super::is_absent(&err) => {
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        for consumer in consumers {
            let idle = Duration::from_millis(u64::try_from(consumer.idle).unwrap_or(0));
            let worker = workers.entry(consumer.name.clone()).or_insert_with(|| {
                let (host, pid) = host_pid(&consumer.name).unzip();
                WorkerInfo {
                    name: consumer.name.clone(),
                    host,
                    pid,
                    tasks_held: 0,
                    idle,
                    queues: Vec::new(),
                }
            });
            worker.tasks_held += u64::try_from(consumer.pending).unwrap_or(0);
            worker.idle = worker.idle.min(idle);
            worker.queues.push(queue.clone());
        }
    }
    Ok(workers.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names() {
        assert_eq!(host_pid("web-1-4242"), Some(("web-1".into(), 4242)));
        assert_eq!(host_pid("mail-3"), Some(("mail".into(), 3)));
        for other in [
            "worker",
            "-12",
            "host-",
            "host-x",
            "host-0",
            "host-99999999999",
        ] {
            assert_eq!(host_pid(other), None, "{other}");
        }
    }
}
