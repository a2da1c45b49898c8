//! nudge.lua: a run waiting for a flow-control slot goes on at the next timer tick.

use super::*;

#[derive(Serialize)]
struct Args<'a> {
    id: &'a str,
    mark: &'a str,
}

#[derive(Deserialize)]
struct Reply {
    #[allow(dead_code)]
    r: String,
}

pub(in crate::store::redis) async fn call(store: &RedisStore, run_id: &RunId) -> Result<()> {
    let keys = store.keys_of(run_id);
    let mut d = Declared::new(keys);
    d.named("run", run_id.as_str(), keys.run(run_id)).one("timers", keys.timers());
    let args = Args { id: run_id.as_str(), mark: crate::flow::WAITING_MARK };
    let _: Reply = run_script(store, &store.scripts.nudge, &d, args, true).await?;
    Ok(())
}
