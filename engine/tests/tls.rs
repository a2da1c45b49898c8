//! `rediss://`: a TLS-only redis-server with a certificate made here, a custom CA
//! and a client certificate; what fails without them fails saying so.

use keel_engine::RunStore;
use std::time::Duration;

use keel_engine::proto::RunStatus;
use keel_engine::testing::TestCertificates;
use keel_engine::{Claim, CreateRun, Finish, RedisStore, RedisTarget, StoreConfig};
use serde_json::json;

fn target(url: &str, certs: &TestCertificates, client: bool) -> RedisTarget {
    RedisTarget {
        urls: vec![url.to_owned()],
        ca_file: Some(certs.ca()),
        cert_file: client.then(|| certs.client_cert()),
        key_file: client.then(|| certs.client_key()),
        ..RedisTarget::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_goes_end_to_end_over_tls_with_a_custom_ca_and_a_client_certificate() {
    let certs = TestCertificates::generate();
    let server = certs.server("yes");
    assert!(server.url().starts_with("rediss://"), "{}", server.url());
    let config = StoreConfig::with_namespace("tls");
    let store = RedisStore::connect_to(&target(&server.url(), &certs, true), config.clone()).await.expect("connect");

    let created = store.create_run(CreateRun { workflow: "w".into(), input: json!(1), ..Default::default() }).await;
    let created = created.expect("create over TLS");
    // The long-poll's subscriber connection is TLS too.
    let waiter = {
        let store = RedisStore::connect_to(&target(&server.url(), &certs, true), config).await.expect("connect");
        let run_id = created.run_id.clone();
        tokio::spawn(async move { store.wait_finished(&run_id, Duration::from_secs(20)).await })
    };
    let claim = Claim {
        workflows: vec!["w".into()],
        worker_id: "w1".into(),
        lease: Duration::from_secs(30),
        max: 1,
        block: Duration::from_secs(2),
        versions: Default::default(),
    };
    let task = store.claim(&claim).await.expect("claim over TLS").pop().expect("a task");
    store.finish(&task.lease, &[], Finish::Complete { output: json!("done") }).await.expect("finish");
    let finished = waiter.await.expect("waiter task").expect("wait_finished").expect("the run ended");
    assert_eq!(finished.status, RunStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_the_ca_or_the_client_certificate_is_refused_clearly() {
    let certs = TestCertificates::generate();
    let server = certs.server("yes");
    let config = StoreConfig::with_namespace("tls");

    // The system's roots do not know the test CA.
    let untrusted = RedisTarget::parse(&server.url()).unwrap();
    let refused = RedisStore::connect_to(&untrusted, config.clone()).await.expect_err("unknown issuer");
    assert!(refused.to_string().to_lowercase().contains("certificate"), "{refused}");

    // The server asks for a client certificate.
    let anonymous = RedisStore::connect_to(&target(&server.url(), &certs, false), config.clone()).await;
    assert!(anonymous.is_err(), "a server with --tls-auth-clients yes refuses a client without a certificate");

    // Certificate files with a plain URL are a mistake, said before connecting.
    let plain = RedisStore::connect_to(&target("redis://127.0.0.1:1", &certs, true), config.clone()).await;
    assert!(plain.expect_err("plain URL").to_string().contains("rediss://"));
    let missing = RedisTarget { ca_file: Some(certs.dir.join("nope.pem")), ..target(&server.url(), &certs, true) };
    let missing = RedisStore::connect_to(&missing, config).await.expect_err("missing CA file");
    assert!(missing.to_string().contains("nope.pem"), "{missing}");
}
