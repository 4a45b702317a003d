//! Finishing an entry: XACK and XDEL in one MULTI/EXEC, so an entry is never acknowledged
//! without being deleted (which would leave it in the stream forever) nor deleted while pending.

use redis::aio::ConnectionManager;
use simplebank_core::task::GROUP;

pub async fn ack_and_delete(
    conn: &mut ConnectionManager,
    stream: &str,
    entry_id: &str,
) -> redis::RedisResult<()> {
    redis::pipe()
        .atomic()
        .cmd("XACK")
        .arg(stream)
        .arg(GROUP)
        .arg(entry_id)
        .ignore()
        .cmd("XDEL")
        .arg(stream)
        .arg(entry_id)
        .ignore()
        .query_async(conn)
        .await
}
