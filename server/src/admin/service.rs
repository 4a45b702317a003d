//! The `QueueAdmin` RPCs. Each checks its request field by field (a bad field is
//! INVALID_ARGUMENT with a BadRequest violation naming it), calls the queue's admin operations,
//! and maps the answer to protobuf. Errors become a `Status` once, in `crate::status`.

use std::time::Duration;

use simplebank_core::redis_client::Connection;
use simplebank_queue::{
    Keys, QueueName, QueueStats,
    admin::{Admin, Selection, TaskInfo, TaskState, WorkerInfo},
};
use tonic::{Request, Response, Status};

use crate::{
    pb::admin::{self as pb, queue_admin_server},
    status,
};

/// The largest page of ListTasks.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// The page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// The most task ids one RequeueDeadTasks or DeleteDeadTasks call may name.
pub const MAX_IDS: usize = 1000;

/// The `QueueAdmin` service, over the queue crate's [`Admin`].
#[derive(Debug, Clone)]
pub struct QueueAdminService {
    admin: Admin,
}

impl QueueAdminService {
    pub fn new(conn: Connection, keys: Keys) -> Self {
        Self {
            admin: Admin::new(conn, keys),
        }
    }
}

fn queue(field: &'static str, raw: &str) -> Result<QueueName, Status> {
    QueueName::parse(raw).map_err(|e| status::bad_field(field, &e.to_string()))
}

/// An optional queue: empty means none.
fn optional_queue(raw: &str) -> Result<Option<QueueName>, Status> {
    if raw.is_empty() {
        return Ok(None);
    }
    queue("queue", raw).map(Some)
}

fn task_id(field: &'static str, raw: &str) -> Result<(), Status> {
    if simplebank_queue::admin::is_valid_task_id(raw) {
        Ok(())
    } else {
        Err(status::bad_field(
            field,
            "must be 1-200 printable characters without spaces",
        ))
    }
}

fn state(raw: i32) -> Result<TaskState, Status> {
    match pb::TaskState::try_from(raw) {
        Ok(pb::TaskState::Pending) => Ok(TaskState::Pending),
        Ok(pb::TaskState::Active) => Ok(TaskState::Active),
        Ok(pb::TaskState::Scheduled) => Ok(TaskState::Scheduled),
        Ok(pb::TaskState::Retry) => Ok(TaskState::Retry),
        Ok(pb::TaskState::Dead) => Ok(TaskState::Dead),
        Ok(pb::TaskState::Unspecified) | Err(_) => Err(status::bad_field(
            "state",
            "must be one of PENDING, ACTIVE, SCHEDULED, RETRY, DEAD",
        )),
    }
}

fn page_size(raw: u32) -> Result<usize, Status> {
    match raw {
        0 => Ok(DEFAULT_PAGE_SIZE as usize),
        1..=MAX_PAGE_SIZE => Ok(raw as usize),
        _ => Err(status::bad_field(
            "page_size",
            &format!("must be at most {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"),
        )),
    }
}

/// `ids` or `all`, exactly one.
fn selection(ids: &[String], all: bool) -> Result<Selection<'_>, Status> {
    match (ids.is_empty(), all) {
        (true, true) => Ok(Selection::All),
        (false, false) => {
            if ids.len() > MAX_IDS {
                return Err(status::bad_field(
                    "ids",
                    &format!("at most {MAX_IDS} ids per call (or all)"),
                ));
            }
            for id in ids {
                task_id("ids", id)?;
            }
            Ok(Selection::Ids(ids))
        }
        _ => Err(status::bad_field("ids", "set exactly one of ids and all")),
    }
}

fn duration(value: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(value.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(value.subsec_nanos()).unwrap_or(0),
    }
}

fn timestamp_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

fn queue_to_pb(stats: QueueStats) -> pb::Queue {
    pb::Queue {
        name: stats.queue.to_string(),
        weight: stats.weight,
        paused: stats.paused,
        pending: stats.pending,
        active: stats.active,
        scheduled: stats.scheduled,
        retry: stats.retry,
        dead: stats.dead,
        oldest_pending_age: stats.oldest_pending_age.map(duration),
        processed: stats.processed,
        failed: stats.failed,
    }
}

fn state_to_pb(state: TaskState) -> pb::TaskState {
    match state {
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Active => pb::TaskState::Active,
        TaskState::Scheduled => pb::TaskState::Scheduled,
        TaskState::Retry => pb::TaskState::Retry,
        TaskState::Dead => pb::TaskState::Dead,
    }
}

fn task_to_pb(task: TaskInfo) -> pb::Task {
    pb::Task {
        id: task.id,
        r#type: task.kind,
        queue: task.queue.to_string(),
        state: state_to_pb(task.state).into(),
        attempt: task.attempt,
        max_retry: task.max_retry,
        last_error: task.last_error.unwrap_or_default(),
        next_run_at: task.next_run_at_ms.map(timestamp_ms),
        trace_id: task.trace_id.unwrap_or_default(),
        payload_redacted: task.payload.is_none(),
        payload: task.payload.unwrap_or_default(),
        enqueued_at: task.enqueued_at_ms.map(timestamp_ms),
        worker: task.worker.unwrap_or_default(),
        idle: task.idle.map(duration),
        deliveries: task.deliveries.unwrap_or_default(),
        dead_at: task.dead_at_ms.map(timestamp_ms),
    }
}

fn worker_to_pb(worker: WorkerInfo) -> pb::Worker {
    pb::Worker {
        name: worker.name,
        host: worker.host.unwrap_or_default(),
        pid: worker.pid.unwrap_or_default(),
        tasks_held: worker.tasks_held,
        idle: Some(duration(worker.idle)),
        queues: worker.queues.iter().map(ToString::to_string).collect(),
    }
}

#[tonic::async_trait]
impl queue_admin_server::QueueAdmin for QueueAdminService {
    async fn list_queues(
        &self,
        _request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let queues = self.admin.list_queues().await.map_err(status::from_admin)?;
        Ok(Response::new(pb::ListQueuesResponse {
            queues: queues.into_iter().map(queue_to_pb).collect(),
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let request = request.into_inner();
        let queue = queue("queue", &request.queue)?;
        let state = state(request.state)?;
        let page_size = page_size(request.page_size)?;
        let token = (!request.page_token.is_empty()).then_some(request.page_token.as_str());
        let page = self
            .admin
            .list_tasks(&queue, state, page_size, token)
            .await
            .map_err(status::from_admin)?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: page.tasks.into_iter().map(task_to_pb).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let request = request.into_inner();
        task_id("id", &request.id)?;
        let queue = optional_queue(&request.queue)?;
        let task = self
            .admin
            .get_task(&request.id, queue.as_ref())
            .await
            .map_err(status::from_admin)?;
        Ok(Response::new(pb::GetTaskResponse {
            task: Some(task_to_pb(task)),
        }))
    }

    async fn requeue_dead_tasks(
        &self,
        request: Request<pb::RequeueDeadTasksRequest>,
    ) -> Result<Response<pb::RequeueDeadTasksResponse>, Status> {
        let request = request.into_inner();
        let queue = queue("queue", &request.queue)?;
        let selection = selection(&request.ids, request.all)?;
        let requeued = self
            .admin
            .requeue_dead(&queue, selection)
            .await
            .map_err(status::from_admin)?;
        Ok(Response::new(pb::RequeueDeadTasksResponse { requeued }))
    }

    async fn delete_dead_tasks(
        &self,
        request: Request<pb::DeleteDeadTasksRequest>,
    ) -> Result<Response<pb::DeleteDeadTasksResponse>, Status> {
        let request = request.into_inner();
        let queue = queue("queue", &request.queue)?;
        let selection = selection(&request.ids, request.all)?;
        let deleted = self
            .admin
            .delete_dead(&queue, selection)
            .await
            .map_err(status::from_admin)?;
        Ok(Response::new(pb::DeleteDeadTasksResponse { deleted }))
    }

    async fn cancel_scheduled_task(
        &self,
        request: Request<pb::CancelScheduledTaskRequest>,
    ) -> Result<Response<pb::CancelScheduledTaskResponse>, Status> {
        let request = request.into_inner();
        task_id("id", &request.id)?;
        let queue = optional_queue(&request.queue)?;
        let cancelled = self
            .admin
            .cancel_scheduled(&request.id, queue.as_ref())
            .await
            .map_err(status::from_admin)?;
        Ok(Response::new(pb::CancelScheduledTaskResponse { cancelled }))
    }

    async fn pause_queue(
        &self,
        request: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::PauseQueueResponse>, Status> {
        let queue = queue("queue", &request.into_inner().queue)?;
        let changed = self.admin.pause(&queue).await.map_err(status::from_admin)?;
        Ok(Response::new(pb::PauseQueueResponse { changed }))
    }

    async fn resume_queue(
        &self,
        request: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::ResumeQueueResponse>, Status> {
        let queue = queue("queue", &request.into_inner().queue)?;
        let changed = self
            .admin
            .resume(&queue)
            .await
            .map_err(status::from_admin)?;
        Ok(Response::new(pb::ResumeQueueResponse { changed }))
    }

    async fn list_workers(
        &self,
        _request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let workers = self
            .admin
            .list_workers()
            .await
            .map_err(status::from_admin)?;
        Ok(Response::new(pb::ListWorkersResponse {
            workers: workers.into_iter().map(worker_to_pb).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(status: &Status) -> String {
        use tonic_types::StatusExt;
        let details = status.get_error_details();
        details
            .bad_request()
            .and_then(|b| b.field_violations.first())
            .map(|v| v.field.clone())
            .unwrap_or_default()
    }

    #[test]
    fn bad_fields_are_named() {
        for (result, field) in [
            (queue("queue", "").map(|_| ()), "queue"),
            (queue("queue", "a:b").map(|_| ()), "queue"),
            (queue("queue", "q\r\nx").map(|_| ()), "queue"),
            (queue("queue", &"q".repeat(65)).map(|_| ()), "queue"),
            (state(0).map(|_| ()), "state"),
            (state(99).map(|_| ()), "state"),
            (state(-1).map(|_| ()), "state"),
            (page_size(MAX_PAGE_SIZE + 1).map(|_| ()), "page_size"),
            (task_id("id", "").map(|_| ()), "id"),
            (task_id("id", "a b").map(|_| ()), "id"),
            (task_id("id", "a\0b").map(|_| ()), "id"),
            (task_id("id", &"x".repeat(201)).map(|_| ()), "id"),
            (selection(&[], false).map(|_| ()), "ids"),
            (selection(&["a".into()], true).map(|_| ()), "ids"),
            (selection(&["a\nb".into()], false).map(|_| ()), "ids"),
            (
                selection(&vec!["a".to_owned(); MAX_IDS + 1], false).map(|_| ()),
                "ids",
            ),
        ] {
            let err = result.expect_err(field);
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}");
            assert_eq!(field_of(&err), field, "{err:?}");
        }
        assert_eq!(page_size(0).unwrap(), 100);
        assert_eq!(page_size(MAX_PAGE_SIZE).unwrap(), 1000);
    }

    #[test]
    fn timestamps_before_and_after_the_epoch() {
        assert_eq!(timestamp_ms(1_500).seconds, 1);
        assert_eq!(timestamp_ms(1_500).nanos, 500_000_000);
        assert_eq!(timestamp_ms(-1).seconds, -1);
        assert_eq!(timestamp_ms(-1).nanos, 999_000_000);
    }
}
