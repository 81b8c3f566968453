//! The HTTP agent client against a small axum stand-in for an agent: the request body is the
//! `POST /v1/step` contract of docs/agent-api.md, and agent errors come back with their text.

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use redoubt_console::record::RowKey;
use redoubt_console::{AgentClient, AgentError, HttpAgentClient, StepRequest};
use serde_json::{json, Value};

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

#[tokio::test]
async fn step_and_status_follow_the_agent_contract() {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let recorder = Arc::clone(&seen);
    let app = Router::new()
        .route(
            "/v1/step",
            post(move |Json(body): Json<Value>| {
                let recorder = Arc::clone(&recorder);
                async move {
                    let step = body["step"].as_u64().unwrap_or(0);
                    recorder.lock().unwrap().push(body);
                    if step == 20 {
                        (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            Json(json!({"error": "lv_data01 is 512MiB on dr-b, configured 1GiB"})),
                        )
                    } else {
                        (
                            StatusCode::OK,
                            Json(json!({"outcome": "done", "message": "ok"})),
                        )
                    }
                }
            }),
        )
        .route(
            "/v1/status",
            get(|| async { Json(json!({"server": "dr-b", "config_version": 3, "groups": []})) }),
        );
    let address = serve(app).await;
    let client = HttpAgentClient::new().unwrap();

    let request = StepRequest {
        group: "erp".into(),
        step: 11,
        row: Some(RowKey::Server {
            server: "dr-b".into(),
            role: "recovery1".into(),
        }),
        config_version: 3,
        config_toml: "# new".into(),
        previous_config_toml: None,
        destroy: false,
    };
    let answer = client.step(&address, &request).await.unwrap();
    assert_eq!(answer.outcome, "done");
    assert_eq!(
        seen.lock().unwrap()[0],
        json!({"group": "erp", "step": 11, "row": {"server": "dr-b", "role": "recovery1"},
               "config_version": 3, "config_toml": "# new", "previous_config_toml": null,
               "destroy": false})
    );

    let one = StepRequest {
        step: 20,
        row: None,
        ..request
    };
    match client.step(&address, &one).await {
        Err(AgentError::Refused {
            status, message, ..
        }) => {
            assert_eq!(status, 500);
            assert_eq!(message, "lv_data01 is 512MiB on dr-b, configured 1GiB");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(seen.lock().unwrap()[1]["row"], Value::Null);

    let status = client.status(&address).await.unwrap();
    assert_eq!(status["config_version"], 3);

    // Nothing listening: unreachable, not a panic or a hang.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    assert!(matches!(
        client.status(&closed).await,
        Err(AgentError::Unreachable { .. })
    ));
}
