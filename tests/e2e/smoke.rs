//! The smallest end-to-end check: one chat call through the gateway is recorded.
use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn one_call_is_recorded() {
    let mock = Mock::start();
    let dir = tempdir();
    let server = Server::start(dir.path(), &providers_yaml(&mock.url));
    let (_, key) = server.create_key("smoke").await;
    let r = call(
        &server.url,
        "/v1/chat/completions",
        &key,
        &json!({"model":"gpt-x","messages":[{"role":"user","content":"hi"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let stats = server.wait_for_calls(1).await;
    assert_eq!(stats["used_tokens"], body["usage"]["total_tokens"]);
}
