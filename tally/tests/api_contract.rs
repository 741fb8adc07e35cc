//! The HTTP API's contract, `ingest/openapi.json`, checked against the
//! server: the document is valid OpenAPI (openapi-spec-validator), every
//! operation it names is served and no other method is, and schemathesis's
//! property-based tests of a running `tally ingest` (write and read tokens,
//! every check) find no failure.

mod common;

use std::process::Command;

use common::{http, required, Backend, World};

const WRITE: &str = "contract-write-token";
const READ: &str = "contract-read-token";

/// A running ingest with write and read tokens and a migrated database (as
/// an aggregator would leave it: ingest only checks the schema); its world
/// and address.
async fn serving(name: &str) -> (World, String) {
    let mut world = World::new(name, Backend::Postgres).await;
    let database = world.database_url.clone();
    let _store = world.store().await;
    let (_, addr) = world
        .start_ingest(
            "ingest",
            WRITE,
            &[
                ("ingest.database_url", &database),
                ("ingest.read_tokens", READ),
            ],
        )
        .await;
    (world, addr)
}

/// Every (method, path) the document names.
fn operations() -> Vec<(String, String)> {
    let document: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::repo().join("ingest/openapi.json")).unwrap())
            .unwrap();
    let mut out = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.push((method.to_uppercase(), path.clone()));
        }
    }
    out
}

#[test]
fn the_document_is_valid_openapi() {
    let validator = required("TALLY_TEST_OPENAPI_VALIDATOR");
    let output = Command::new(validator)
        .arg("ingest/openapi.json")
        .current_dir(common::repo())
        .output()
        .expect("openapi-spec-validator runs");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Each documented operation is served (not 404 or 405), and a method the
/// document does not name for a path is refused with 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_exactly_the_documented_operations() {
    let (_world, addr) = serving("contract-routes").await;
    let operations = operations();
    assert!(operations.len() >= 8, "{operations:?}");
    for (method, path) in &operations {
        let concrete = path.replace("{merchant_id}", "m-1");
        let (status, _) = http(&addr, method, &concrete, &[], b"").await.unwrap();
        assert!(
            status != 404 && status != 405,
            "{method} {path} is documented but answered {status}"
        );
        for other in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if operations.iter().any(|(m, p)| m == other && p == path) {
                continue;
            }
            let (status, _) = http(&addr, other, &concrete, &[], b"").await.unwrap();
            assert_eq!(
                status, 405,
                "{other} {path} is not documented but answered {status}"
            );
        }
    }
    let (status, _) = http(&addr, "GET", "/v1/undocumented", &[], b"")
        .await
        .unwrap();
    assert_eq!(status, 404);
}

/// Schemathesis against a running ingest, every check on (but the two that
/// judge a body by the schema alone where the rules go beyond it: see
/// `files/schemathesis/schemathesis.toml`): the writing operations with a
/// write token, the reading ones with a read token; zero failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure() {
    let schemathesis = required("TALLY_TEST_SCHEMATHESIS");
    let (_world, addr) = serving("contract").await;
    let url = format!("http://{addr}");
    for (method, token) in [("POST", WRITE), ("GET", READ)] {
        let settings = common::repo().join("tally/tests/files/schemathesis");
        let output = Command::new(&schemathesis)
            .env("PYTHONPATH", &settings)
            .arg("--config-file")
            .arg(settings.join("schemathesis.toml"))
            .args([
                "run",
                "ingest/openapi.json",
                "--url",
                &url,
                "--header",
                &format!("Authorization: Bearer {token}"),
                "--include-method",
                method,
                "--max-examples",
                "40",
                "--seed",
                "20261207",
                "--workers",
                "1",
                "--generation-database",
                "none",
                "--no-color",
            ])
            .current_dir(common::repo())
            .output()
            .expect("schemathesis runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "schemathesis ({method} with a {token}):\n{said}"
        );
    }
}
