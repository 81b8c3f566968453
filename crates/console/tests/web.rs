//! The web console's front door over HTTP: login with a token (wrong ones create nothing), the
//! session cookie's flags, CSRF on every mutating request that rides on a session, the token's
//! role applied to the session as to the CLI, the wizard's plan equal to `POST /v1/config/plan`,
//! Finish saving through the API, rotation ending sessions, logout, and `/metrics` behind the
//! token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redoubt_console::agent::{AgentFuture, StepRequest, StepResponse};
use redoubt_console::{AgentClient, Console, ConsoleConfig};
use serde_json::{json, Value};
use tokio::sync::watch;

const CONFIG: &str = r#"
[[server]]
name = "prod-a"
address = "prod-a.test:7411"
data_dir = "/var/lib/redoubt/prod-a"

[[server]]
name = "dr-b"
address = "dr-b.test:7412"
data_dir = "/var/lib/redoubt/dr-b"

[[group]]
name = "erp"
production = "prod-a"
recovery = ["dr-b"]
mode = "async"
retention = "24h"
throttle = "0"
compression = "none"

[group.containers]
replication = "4GiB"
log_record_file = "1GiB"
snapshot = "1GiB"

[[group.volume]]
name = "lv_data01"
size = "1GiB"
"#;

/// Every step succeeds.
struct Agents;

impl AgentClient for Agents {
    fn step<'a>(&'a self, _: &'a str, _: &'a StepRequest) -> AgentFuture<'a, StepResponse> {
        Box::pin(async {
            Ok(StepResponse {
                outcome: "done".into(),
                message: None,
            })
        })
    }

    fn status<'a>(&'a self, _: &'a str) -> AgentFuture<'a, Value> {
        Box::pin(async { Ok(json!({})) })
    }
}

struct Browser {
    url: String,
    http: reqwest::Client,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    fn set_cookie(&self) -> Option<String> {
        self.headers
            .get(reqwest::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    fn location(&self) -> Option<String> {
        self.headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

impl Browser {
    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("send");
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            text: response.text().await.unwrap_or_default(),
        }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Answer {
        let mut request = self.http.get(format!("{}{path}", self.url));
        if let Some(cookie) = cookie {
            request = request.header(reqwest::header::COOKIE, cookie);
        }
        self.send(request).await
    }

    async fn post_json(
        &self,
        path: &str,
        cookie: Option<&str>,
        csrf: Option<&str>,
        body: Value,
    ) -> Answer {
        let mut request = self.http.post(format!("{}{path}", self.url)).json(&body);
        if let Some(cookie) = cookie {
            request = request.header(reqwest::header::COOKIE, cookie);
        }
        if let Some(csrf) = csrf {
            request = request.header("X-CSRF-Token", csrf);
        }
        self.send(request).await
    }

    async fn post_form(&self, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Answer {
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let mut request = self
            .http
            .post(format!("{}{path}", self.url))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        if let Some(cookie) = cookie {
            request = request.header(reqwest::header::COOKIE, cookie);
        }
        self.send(request).await
    }

    /// Logs in; the `name=value` of the session cookie and the page's CSRF token.
    async fn login(&self, token: &str) -> (String, String) {
        let answer = self.post_form("/ui/login", None, &[("token", token)]).await;
        assert_eq!(answer.status, 303, "login redirects: {}", answer.text);
        assert_eq!(answer.location().as_deref(), Some("/ui"));
        let set_cookie = answer.set_cookie().expect("a session cookie");
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(set_cookie.contains(flag), "{flag} in {set_cookie}");
        }
        // This console serves plain HTTP: a Secure cookie would never come back.
        assert!(!set_cookie.contains("Secure"), "{set_cookie}");
        let cookie = set_cookie
            .split(';')
            .next()
            .expect("name=value")
            .to_string();
        let page = self.get("/ui", Some(&cookie)).await;
        assert_eq!(page.status, 200, "{}", page.text);
        let marker = "<meta name=\"csrf-token\" content=\"";
        let start = page.text.find(marker).expect("csrf meta") + marker.len();
        let csrf = page.text[start..start + 64].to_string();
        assert!(csrf.bytes().all(|b| b.is_ascii_hexdigit()), "{csrf}");
        (cookie, csrf)
    }
}

fn read_token(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .expect("read token")
        .trim()
        .to_string()
}

#[tokio::test]
async fn sessions_csrf_roles_wizard_and_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let console = Console::bind_with_agent(
        ConsoleConfig {
            listen: "127.0.0.1:0".into(),
            state_dir: dir.path().to_path_buf(),
        },
        Arc::new(Agents),
    )
    .await
    .expect("bind the console");
    let browser = Browser {
        url: console.url().expect("url"),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
    };
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(console.serve(stopped));
    let operator = read_token(&dir.path().join("token"));
    let read_only = read_token(&dir.path().join("token.readonly"));
    let applied = browser
        .http
        .post(format!("{}/v1/config", browser.url))
        .bearer_auth(&operator)
        .json(&json!({"toml": CONFIG}))
        .send()
        .await
        .expect("apply");
    assert_eq!(applied.status().as_u16(), 200);

    // Anonymous: pages send to the login, the API and fragments say 401.
    let anonymous = browser.get("/ui", None).await;
    assert_eq!(anonymous.status, 303);
    assert_eq!(anonymous.location().as_deref(), Some("/ui/login"));
    assert_eq!(
        browser.get("/ui/fragment/dashboard", None).await.status,
        401
    );
    assert_eq!(browser.get("/v1/status", None).await.status, 401);
    let assets = browser.get("/ui/assets/app.js", None).await;
    assert_eq!(assets.status, 200);
    assert!(assets.text.contains("X-CSRF-Token"));

    // A wrong token: the form again with the reason, no session.
    let wrong = browser
        .post_form("/ui/login", None, &[("token", "00ff00ff")])
        .await;
    assert_eq!(wrong.status, 200);
    assert!(wrong.text.contains("not valid"), "{}", wrong.text);
    assert!(wrong.set_cookie().is_none());

    // A read-only session reads, and is refused every change: CSRF first, then its role.
    let (reader, reader_csrf) = browser.login(&read_only).await;
    assert_eq!(browser.get("/v1/status", Some(&reader)).await.status, 200);
    let window = browser.get("/ui/groups/erp", Some(&reader)).await;
    assert_eq!(window.status, 200);
    assert!(
        window.text.contains("Configuration Summary"),
        "{}",
        window.text
    );
    assert!(window
        .text
        .contains("Configuration Initialization Progress"));
    let security = window
        .headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(security.contains("default-src 'self'"), "{security}");
    let no_csrf = browser
        .post_json("/v1/config", Some(&reader), None, json!({"toml": CONFIG}))
        .await;
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.text);
    assert!(no_csrf.json()["error"]
        .as_str()
        .unwrap_or("")
        .contains("CSRF"));
    let wrong_csrf = browser
        .post_json(
            "/v1/config",
            Some(&reader),
            Some(&"0".repeat(64)),
            json!({"toml": CONFIG}),
        )
        .await;
    assert_eq!(wrong_csrf.status, 403);
    assert!(wrong_csrf.json()["error"]
        .as_str()
        .unwrap_or("")
        .contains("CSRF"));
    let by_role = browser
        .post_json(
            "/v1/config",
            Some(&reader),
            Some(&reader_csrf),
            json!({"toml": CONFIG}),
        )
        .await;
    assert_eq!(by_role.status, 403, "{}", by_role.text);
    assert!(
        by_role.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("may only read"),
        "the API's role check applies to the session: {}",
        by_role.text
    );

    // Issue #18 finding 9: the wrong login and the CSRF refusals are in the audit log.
    let audit = browser
        .http
        .get(format!("{}/v1/audit", browser.url))
        .bearer_auth(&operator)
        .send()
        .await
        .expect("audit")
        .json::<Value>()
        .await
        .expect("audit JSON");
    let entries = audit["entries"].as_array().expect("entries");
    assert!(
        entries
            .iter()
            .any(|e| e["path"] == "/ui/login" && e["status"] == 401 && e["who"] == "anonymous"),
        "the refused login is audited: {audit:#}"
    );
    let csrf_refusals = entries
        .iter()
        .filter(|e| {
            e["status"] == 403
                && e["who"] == "read-only"
                && e["summary"].as_str().is_some_and(|s| s.contains("CSRF"))
        })
        .count();
    assert_eq!(
        csrf_refusals, 2,
        "both CSRF refusals are audited: {audit:#}"
    );

    // An operator session: the wizard's plan is exactly the API's plan; Finish saves.
    let (session, csrf) = browser.login(&operator).await;
    let wizard = browser.get("/ui/groups/erp/change", Some(&session)).await;
    assert_eq!(wizard.status, 200);
    assert!(wizard.text.contains("data-volume=\"lv_data01\""));
    let form = json!({
        "volumes": [{"name": "lv_data01", "size": "1GiB", "remove": false}],
        "add_volumes": [{"name": "lv_web", "size": "16MiB"}],
        "replication": "4GiB", "log_record_file": "1GiB", "snapshot": "1GiB",
        "recovery": ["dr-b"], "mode": "async", "retention": "24h", "throttle": "0",
        "compression": "none",
    });
    let unprotected = browser
        .post_json(
            "/ui/groups/erp/change/plan",
            Some(&session),
            None,
            form.clone(),
        )
        .await;
    assert_eq!(
        unprotected.status, 403,
        "the plan endpoint needs the CSRF token too"
    );
    let planned = browser
        .post_json(
            "/ui/groups/erp/change/plan",
            Some(&session),
            Some(&csrf),
            form.clone(),
        )
        .await;
    assert_eq!(planned.status, 200, "{}", planned.text);
    let planned = planned.json();
    let toml = planned["toml"].as_str().expect("toml").to_string();
    assert!(planned["html"]
        .as_str()
        .unwrap_or("")
        .contains("volume lv_web"));
    let api_plan = browser
        .post_json(
            "/v1/config/plan",
            Some(&session),
            Some(&csrf),
            json!({"toml": toml}),
        )
        .await;
    assert_eq!(api_plan.status, 200, "{}", api_plan.text);
    assert_eq!(api_plan.json()["plans"], planned["plans"], "the exact plan");
    let steps: Vec<u64> = planned["plans"][0]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["number"].as_u64())
        .collect();
    assert_eq!(steps, vec![1, 2, 11, 13, 14, 15, 16, 20]);
    let mut bad = form.clone();
    bad["volumes"][0]["size"] = json!("512MiB");
    let refused = browser
        .post_json(
            "/ui/groups/erp/change/plan",
            Some(&session),
            Some(&csrf),
            bad,
        )
        .await;
    assert_eq!(refused.status, 400);
    assert!(refused.text.contains("never shrink"), "{}", refused.text);
    let saved = browser
        .post_json(
            "/v1/config",
            Some(&session),
            Some(&csrf),
            json!({"toml": toml}),
        )
        .await;
    assert_eq!(saved.status, 200, "{}", saved.text);
    assert_eq!(saved.json()["version"], 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let window = browser.get("/ui/groups/erp/fragment", Some(&session)).await;
        if window.text.contains("data-init-state=\"done\"") {
            assert!(
                window.text.contains("data-volume=\"lv_web\""),
                "{}",
                window.text
            );
            break;
        }
        assert!(Instant::now() < deadline, "never done: {}", window.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // /metrics: behind the token; the session's token works like any other.
    assert_eq!(browser.get("/metrics", None).await.status, 401);
    let metrics = browser.get("/metrics", Some(&session)).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text.contains("redoubt_config_version 2"),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains("redoubt_initialization_step_duration_seconds{group=\"erp\",step=\"13\"}"),
        "{}",
        metrics.text
    );

    // Rotating the operator token ends the sessions opened with it.
    let rotated = browser
        .post_json(
            "/v1/auth/rotate",
            Some(&session),
            Some(&csrf),
            json!({"role": "operator"}),
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    assert_eq!(browser.get("/ui", Some(&session)).await.status, 303);
    assert_eq!(browser.get("/v1/status", Some(&session)).await.status, 401);

    // Logout needs the session's CSRF token, then ends the session.
    let forged = browser
        .post_form("/ui/logout", Some(&reader), &[("csrf", "nope")])
        .await;
    assert_eq!(forged.status, 403);
    assert_eq!(
        browser.get("/ui", Some(&reader)).await.status,
        200,
        "still logged in"
    );
    let out = browser
        .post_form("/ui/logout", Some(&reader), &[("csrf", &reader_csrf)])
        .await;
    assert_eq!(out.status, 303);
    assert!(out.set_cookie().unwrap_or_default().contains("Max-Age=0"));
    assert_eq!(browser.get("/ui", Some(&reader)).await.status, 303);

    stop.send_replace(true);
    task.await.expect("join").expect("serve");
}
