//! The agent end to end, with real sockets: local HTTP servers stand in for the
//! service (plan / execute / reflect endpoints, verifying every signature) and
//! for the model API; the worker runs in process on a private redis-server.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use keel_engine::proto::{JournalEvent, RunId, RunStatus, RunSummary};
use keel_engine::testing::RedisServer;
use keel_engine::{CreateRun, RedisStore, Store, StoreConfig};
use keel_net::Signer;
use keel_worker::{RetryPolicy, Worker};
use keel_workflows::llm_agent::LlmConfig;
use serde_json::{Value, json};

/// What a phase answers: a status and a body. Scripts run out into `default`.
#[derive(Clone)]
struct Answer(u16, Value);

#[derive(Default)]
struct Service {
    public_key: String,
    /// Per path (or per path and step id): answers to give, in order.
    scripts: Mutex<HashMap<String, VecDeque<Answer>>>,
    defaults: Mutex<HashMap<String, Answer>>,
    /// Calls per idempotency key, and requests whose signature did not verify.
    calls: Mutex<HashMap<String, usize>>,
    bodies: Mutex<Vec<(String, Value)>>,
    unsigned: Mutex<usize>,
}

impl Service {
    fn script(&self, key: &str, answers: Vec<Answer>) {
        self.scripts.lock().unwrap().insert(key.to_owned(), answers.into());
    }
    fn default(&self, path: &str, answer: Answer) {
        self.defaults.lock().unwrap().insert(path.to_owned(), answer);
    }
    /// Calls whose idempotency key (`run:step`) contains `part`.
    fn calls_to(&self, part: &str) -> usize {
        self.calls.lock().unwrap().iter().filter(|(k, _)| k.contains(part)).map(|(_, n)| n).sum()
    }
}

async fn serve(
    State(state): State<Arc<Service>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let path = uri.path().to_owned();
    if !state.public_key.is_empty() {
        let verified = h("webhook-timestamp")
            .parse()
            .is_ok_and(|ts| keel_net::verify(&state.public_key, &h("webhook-id"), ts, &body, &h("webhook-signature")));
        if !verified {
            *state.unsigned.lock().unwrap() += 1;
            return (StatusCode::UNAUTHORIZED, "unsigned").into_response();
        }
    }
    *state.calls.lock().unwrap().entry(h("idempotency-key")).or_default() += 1;
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.bodies.lock().unwrap().push((path.clone(), json.clone()));
    let step_key = format!("{path}:{}", json["step"]["id"].as_str().unwrap_or_default());
    let scripted = {
        let mut scripts = state.scripts.lock().unwrap();
        scripts
            .get_mut(&step_key)
            .and_then(VecDeque::pop_front)
            .or_else(|| scripts.get_mut(&path).and_then(VecDeque::pop_front))
    };
    let Answer(status, mut reply) = scripted
        .or_else(|| state.defaults.lock().unwrap().get(&path).cloned())
        .unwrap_or(Answer(404, json!("no route")));
    if path == "/execute" && reply == json!("echo") {
        reply = json!({"did": json["step"]["id"]});
    }
    (StatusCode::from_u16(status).unwrap(), axum::Json(reply)).into_response()
}

async fn start_service(service: Arc<Service>) -> String {
    let app = axum::Router::new().fallback(serve).with_state(service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

struct Env {
    store: Arc<dyn Store>,
    _redis: RedisServer,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    signer: Signer,
}

impl Env {
    async fn new(llm: Option<String>) -> Self {
        let redis = RedisServer::start();
        let store: Arc<dyn Store> = Arc::new(
            RedisStore::connect(&redis.url(), StoreConfig::with_namespace(RedisServer::unique_namespace("agent")))
                .await
                .unwrap(),
        );
        let signer = Signer::generate().unwrap();
        let retry = RetryPolicy::attempts(5).initial(Duration::from_millis(100)).jitter(0.0);
        let llm =
            LlmConfig::new(llm.unwrap_or_else(|| "http://127.0.0.1:9".into()), "test-model", Some("sk-test".into()));
        let mut builder = Worker::builder()
            .store(store.clone())
            .signing_key(signer.clone())
            .allow_private_targets(true)
            .timer_tick(Duration::from_millis(20));
        for workflow in keel_workflows::all_with(llm, retry) {
            builder = builder.register(workflow);
        }
        let worker = builder.build().await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        }));
        Self { store, _redis: redis, stop: Some(stop), signer }
    }

    async fn run(&self, workflow: &str, input: Value) -> RunSummary {
        let id = self
            .store
            .create_run(CreateRun { workflow: workflow.into(), version: 1, input, ..Default::default() })
            .await
            .unwrap()
            .run_id;
        self.finish(&id).await
    }

    async fn finish(&self, id: &RunId) -> RunSummary {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let run = self.store.get_run(id).await.unwrap().unwrap();
            if run.status.is_final() {
                return run;
            }
            assert!(Instant::now() < deadline, "run {id} did not finish: {run:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn http_input(url: &str, extra: Value) -> Value {
    let mut input = json!({
        "goal": {"question": "what is 6 × 7?"},
        "endpoints": {"plan": format!("{url}/plan"), "execute": format!("{url}/execute"), "reflect": format!("{url}/reflect")},
    });
    if let (Some(input), Some(extra)) = (input.as_object_mut(), extra.as_object()) {
        input.extend(extra.clone());
    }
    input
}

async fn service(env: &Env) -> (Arc<Service>, String) {
    let service = Arc::new(Service { public_key: env.signer.public_key_base64(), ..Default::default() });
    service.default("/plan", Answer(200, json!({"steps": [{"id": "a", "task": "think"}, {"id": "b"}, {"id": "c"}]})));
    service.default("/execute", Answer(200, json!("echo")));
    service.default("/reflect", Answer(200, json!({"done": true, "summary": 42})));
    let url = start_service(service.clone()).await;
    (service, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_phases_complete_and_the_output_holds_them() {
    let env = Env::new(None).await;
    let (service, url) = service(&env).await;
    let run = env.run("agent-http", http_input(&url, json!({}))).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    let output = run.output.unwrap();
    assert_eq!(output["summary"], 42);
    assert_eq!(output["done"], true);
    let round = &output["rounds"][0];
    assert_eq!(round["plan"].as_array().unwrap().len(), 3);
    assert_eq!(round["outcomes"][1], json!({"step": {"id": "b"}, "outcome": {"did": "b"}}));
    assert_eq!(round["reflection"]["summary"], 42);
    assert_eq!((run.total_steps, run.completed_steps), (Some(5), 5), "plan + 3 steps + reflect");
    assert!(
        serde_json::from_value::<keel_engine::proto::agent::AgentOutput>(output.clone()).is_ok(),
        "the output fits the schema type"
    );
    // The contract: what the service received.
    let bodies = service.bodies.lock().unwrap().clone();
    let plan = &bodies.iter().find(|(p, _)| p == "/plan").unwrap().1;
    assert_eq!(
        (plan["run_id"].as_str(), plan["step_id"].as_str(), plan["round"].as_u64()),
        (Some(run.run_id.as_str()), Some("plan-1"), Some(1))
    );
    assert_eq!(plan["feedback"], Value::Null);
    let reflect = &bodies.iter().find(|(p, _)| p == "/reflect").unwrap().1;
    assert_eq!(reflect["outcomes"].as_array().unwrap().len(), 3);
    assert_eq!(*service.unsigned.lock().unwrap(), 0, "every request was signed and verified");
    assert_eq!(service.calls.lock().unwrap().values().sum::<usize>(), 5);
    assert!(
        service.calls.lock().unwrap().keys().all(|k| k.starts_with(run.run_id.as_str())),
        "idempotency keys are run:step"
    );
}

/// Each handler under its own flow-control key: the executes (three in
/// parallel otherwise) one at a time under theirs, the plan and reflect under another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_handler_calls_under_its_own_flow_control_key() {
    let env = Env::new(None).await;
    let (service, url) = service(&env).await;
    let input = http_input(
        &url,
        json!({"flow_control": {
            "plan": {"key": "model", "rate": 100, "period": "1m"},
            "execute": {"key": "tools", "parallelism": 1},
            "reflect": {"key": "model", "rate": 100, "period": "1m"}}}),
    );
    let run = env.run("agent-http", input).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(service.calls.lock().unwrap().values().sum::<usize>(), 5);
    let tools = env.store.flow_key("tools").await.unwrap().expect("the executes used their key");
    assert_eq!(tools.requested.and_then(|l| l.parallelism), Some(1));
    // The last give-back goes out just after its attempt ends, not with the finish.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tools = env.store.flow_key("tools").await.unwrap().unwrap();
        if (tools.in_flight, tools.waiting) == (0, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "a slot never came back: {tools:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let model = env.store.flow_key("model").await.unwrap().expect("plan and reflect used theirs");
    assert_eq!(model.starts_in_window, 2, "one plan, one reflect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_and_a_400_fails_the_step_at_once() {
    let env = Env::new(None).await;
    let (service, url) = service(&env).await;
    service.script("/execute:b", vec![Answer(503, json!("busy")), Answer(503, json!("busy"))]);
    let run = env.run("agent-http", http_input(&url, json!({}))).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(service.calls_to(":execute-1-b@"), 3, "503, 503, then 200");
    assert_eq!(service.calls_to(":execute-1-a@"), 1);

    service.script("/execute:c", vec![Answer(400, json!({"error": "no such tool"}))]);
    let failed = env.run("agent-http", http_input(&url, json!({}))).await;
    assert_eq!(failed.status, RunStatus::Failed);
    let error = failed.error.unwrap();
    assert_eq!(error.kind, "terminal");
    assert!(error.message.contains("400") && error.message.contains("no such tool"), "{}", error.message);
    assert_eq!(service.calls_to(&format!("{}:execute-1-c@", failed.run_id)), 1, "no retry after a 400");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_asks_for_more_rounds_until_the_limit() {
    let env = Env::new(None).await;
    let (service, url) = service(&env).await;
    service.script("/reflect", vec![Answer(200, json!({"done": false, "feedback": "dig deeper"}))]);
    let two = env.run("agent-http", http_input(&url, json!({}))).await;
    let output = two.output.unwrap();
    assert_eq!(output["rounds"].as_array().unwrap().len(), 2);
    assert_eq!(output["done"], true);
    let plans: Vec<Value> =
        service.bodies.lock().unwrap().iter().filter(|(p, _)| p == "/plan").map(|(_, b)| b.clone()).collect();
    assert_eq!(plans[1]["feedback"], "dig deeper", "round 2 plans with round 1's feedback");
    assert_eq!(plans[1]["round"], 2);
    assert_eq!(two.total_steps, Some(10), "total_steps grew with the second plan");

    service.default("/reflect", Answer(200, json!({"done": false, "feedback": "again"})));
    let limited = env.run("agent-http", http_input(&url, json!({"max_rounds": 2}))).await;
    let output = limited.output.unwrap();
    assert_eq!(limited.status, RunStatus::Completed);
    assert_eq!((output["rounds"].as_array().unwrap().len(), &output["done"]), (2, &json!(false)));
    assert_eq!(service.calls_to(&format!("{}:plan-3", limited.run_id)), 0, "no third round");
}

#[derive(Default)]
struct Model {
    /// What the model answers to each prompt kind; scripts run out into the default.
    answers: Mutex<HashMap<&'static str, VecDeque<String>>>,
    calls: Mutex<HashMap<&'static str, usize>>,
    auth: Mutex<Vec<String>>,
}

async fn model_api(
    State(model): State<Arc<Model>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    model
        .auth
        .lock()
        .unwrap()
        .push(headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned());
    let system = body["messages"][0]["content"].as_str().unwrap_or_default();
    let kind = if system.contains("planner") {
        "plan"
    } else if system.contains("review") {
        "reflect"
    } else {
        "execute"
    };
    *model.calls.lock().unwrap().entry(kind).or_default() += 1;
    let content = {
        let mut answers = model.answers.lock().unwrap();
        let queue = answers.entry(kind).or_default();
        if queue.len() > 1 { queue.pop_front().unwrap() } else { queue.front().cloned().unwrap_or_default() }
    };
    axum::Json(json!({
        "choices": [{"message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }))
    .into_response()
}

async fn start_model(model: Arc<Model>) -> String {
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(model_api)).with_state(model);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_agent_plans_executes_and_reflects_with_a_model() {
    let model = Arc::new(Model::default());
    {
        let mut answers = model.answers.lock().unwrap();
        answers.insert(
            "plan",
            vec!["Here is the plan:\n```json\n{\"steps\": [{\"id\": \"s1\", \"task\": \"multiply\"}]}\n```".to_owned()]
                .into(),
        );
        answers.insert("execute", vec!["6 × 7 = 42".to_owned()].into());
        answers.insert("reflect", vec!["{\"done\": true, \"summary\": \"42\"}".to_owned()].into());
    }
    let url = start_model(model.clone()).await;
    let env = Env::new(Some(url)).await;
    let run = env.run("agent-llm", json!({"goal": "what is 6 × 7?"})).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    let output = run.output.unwrap();
    assert_eq!(output["summary"], "42");
    assert_eq!(output["rounds"][0]["outcomes"][0]["outcome"]["result"], "6 × 7 = 42");
    assert_eq!(
        output["rounds"][0]["outcomes"][0]["outcome"]["usage"]["total_tokens"], 18,
        "token usage is in the step outputs"
    );
    let journal = env.store.read_journal(&run.run_id, None, 1000).await.unwrap();
    let plan_output = journal.iter().find_map(|r| match &r.entry.event {
        JournalEvent::StepCompleted { step_id, output, .. } if step_id == "plan-1" => Some(output.clone()),
        _ => None,
    });
    assert_eq!(plan_output.unwrap()["usage"]["prompt_tokens"], 11);
    assert!(model.auth.lock().unwrap().iter().all(|a| a == "Bearer sk-test"), "the key goes to the model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_answering_without_json_is_retried_then_fails_that_step_clearly() {
    let model = Arc::new(Model::default());
    model.answers.lock().unwrap().insert("plan", vec!["I am sorry, I cannot help with that.".to_owned()].into());
    let url = start_model(model.clone()).await;
    let env = Env::new(Some(url)).await;
    let run = env.run("agent-llm", json!({"goal": "anything"})).await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert_eq!(error.step_id.as_deref(), Some("plan-1"));
    assert!(error.message.contains("not JSON") && error.message.contains("I am sorry"), "{}", error.message);
    assert_eq!(model.calls.lock().unwrap()["plan"], 5, "five attempts, then the step failed");
    // A model that recovers within the attempts: the run goes on.
    let model = Arc::new(Model::default());
    {
        let mut answers = model.answers.lock().unwrap();
        answers.insert("plan", vec!["no".to_owned(), "{\"steps\": [{\"id\": \"x\"}]}".to_owned()].into());
        answers.insert("execute", vec!["done".to_owned()].into());
        answers.insert("reflect", vec!["{\"done\": true, \"summary\": 1}".to_owned()].into());
    }
    let url = start_model(model.clone()).await;
    let env = Env::new(Some(url)).await;
    let run = env.run("agent-llm", json!({"goal": "anything"})).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(model.calls.lock().unwrap()["plan"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_refuses_unsigned_requests() {
    // A service that knows another key refuses Keel's requests: 401 is a 4xx, so
    // the step fails at once and says why.
    let env = Env::new(None).await;
    let stranger = Signer::generate().unwrap();
    let service = Arc::new(Service { public_key: stranger.public_key_base64(), ..Default::default() });
    let url = start_service(service.clone()).await;
    let run = env.run("agent-http", http_input(&url, json!({}))).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.unwrap().message.contains("401"));
    assert_eq!(*service.unsigned.lock().unwrap(), 1);
}
