//! expire.lua: delete finished runs past their retention, with every key and
//! index entry they had.

use std::collections::BTreeMap;

use super::*;

#[derive(Serialize)]
struct Run<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    wf: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    st: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idem: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lab: Option<&'a str>,
}

#[derive(Serialize)]
struct Args<'a> {
    runs: Vec<Run<'a>>,
}

#[derive(Deserialize)]
struct Reply {
    n: usize,
}

/// Expire up to `limit` runs of partition `keys`; how many went.
pub(in crate::store::redis) async fn call(store: &RedisStore, keys: &Keys, limit: usize) -> Result<usize> {
    let ids = due::call(store, keys, keys.retention(), limit).await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let facts = read_fields(store, keys, &ids, &["wf", "st", "idem", "lab"]).await?;
    let mut d = Declared::new(keys);
    d.one("retention", keys.retention()).one("runs", keys.runs());
    for (id, f) in ids.iter().zip(&facts) {
        d.run(id);
        if let (Some(wf), Some(st)) = (&f[0], &f[1]) {
            let status: RunStatus = st.parse().map_err(|e: String| Error::corrupt(format!("run {id}"), e))?;
            d.statuses(wf, &[status]).named("runs_wf", wf, keys.runs_by_workflow(wf));
        }
        if let Some(idem) = &f[2] {
            d.named("idem", idem, keys.idempotency(idem));
        }
        if let Some(lab) = &f[3] {
            let labels: BTreeMap<String, String> = super::super::from_json(&format!("run {id}"), lab)?;
            for (name, value) in &labels {
                d.named("label", format!("{name}={value}"), keys.runs_by_label(name, value));
            }
        }
    }
    let runs = ids
        .iter()
        .zip(&facts)
        .map(|(id, f)| Run {
            id: id.as_str(),
            wf: f[0].as_deref(),
            st: f[1].as_deref(),
            idem: f[2].as_deref(),
            lab: f[3].as_deref(),
        })
        .collect();
    let reply: Reply = run_script(store, &store.scripts.expire, &d, Args { runs }, true).await?;
    Ok(reply.n)
}
