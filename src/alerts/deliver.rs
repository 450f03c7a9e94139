//! Delivery of an alert to one target: the message shaped and signed as the target's service
//! defines it, posted with a timeout, retried with a doubling backoff, and every try's outcome
//! noted in the store.

use std::time::Duration;

use serde_json::json;

use super::payload::AlertPayload;
use super::sign;
use crate::config::{AlertTarget, AlertsConfig, TargetKind};
use crate::store::{Delivery, Store};

/// A request ready to post.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// Where (with DingTalk's signature in the query).
    pub url: String,
    /// Headers besides `Content-Type: application/json`.
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// The request that delivers `payload` to `target` at `now`.
pub fn prepare(target: &AlertTarget, payload: &AlertPayload, now: jiff::Timestamp) -> Prepared {
    let secret = target.secret.as_ref().map(|s| s.expose());
    let text = &payload.event_message;
    let mut url = target.url.expose().to_owned();
    let mut headers = Vec::new();
    let body = match target.kind {
        TargetKind::Webhook => {
            let body = serde_json::to_vec(payload).unwrap_or_default();
            if let Some(secret) = secret {
                // Signed like Stripe's webhooks: the timestamp, a dot, the body.
                let ts = now.as_second();
                let mut signed = format!("{ts}.").into_bytes();
                signed.extend_from_slice(&body);
                let mac = sign::hex(&sign::hmac_sha256(secret.as_bytes(), &signed));
                headers.push(("x-token-console-timestamp", ts.to_string()));
                headers.push(("x-token-console-signature", format!("sha256={mac}")));
            }
            body
        }
        TargetKind::Slack => json!({ "text": text }).to_string().into_bytes(),
        TargetKind::Feishu => {
            let mut body = json!({ "msg_type": "text", "content": { "text": text } });
            if let Some(secret) = secret {
                let ts = now.as_second();
                body["timestamp"] = json!(ts.to_string());
                body["sign"] = json!(sign::feishu(secret, ts));
            }
            body.to_string().into_bytes()
        }
        TargetKind::Dingtalk => {
            if let Some(secret) = secret {
                let ts = now.as_millisecond();
                let joiner = if url.contains('?') { '&' } else { '?' };
                url = format!(
                    "{url}{joiner}timestamp={ts}&sign={}",
                    sign::dingtalk(secret, ts)
                );
            }
            json!({ "msgtype": "text", "text": { "content": text } })
                .to_string()
                .into_bytes()
        }
        TargetKind::Wecom => json!({ "msgtype": "text", "text": { "content": text } })
            .to_string()
            .into_bytes(),
    };
    Prepared { url, headers, body }
}

/// Whether an answer means the message was taken: a 2xx, and for the robots (which answer 200
/// to a refusal too) a zero `code` (Feishu) or `errcode` (DingTalk, WeCom) in the body.
pub fn accepted(kind: TargetKind, status: u16, body: &[u8]) -> Result<(), String> {
    if !(200..300).contains(&status) {
        return Err(format!("answered HTTP {status}"));
    }
    let field = match kind {
        TargetKind::Feishu => "code",
        TargetKind::Dingtalk | TargetKind::Wecom => "errcode",
        TargetKind::Webhook | TargetKind::Slack => return Ok(()),
    };
    let answer: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match answer.get(field).and_then(serde_json::Value::as_i64) {
        None | Some(0) => Ok(()),
        Some(code) => {
            let msg = ["msg", "errmsg"]
                .iter()
                .find_map(|m| answer.get(*m).and_then(serde_json::Value::as_str))
                .unwrap_or("");
            Err(format!("refused the message: {field} {code} {msg}")
                .trim_end()
                .to_owned())
        }
    }
}

/// One try: `Ok(status)` when taken, else the status (if an answer came) and why not.
async fn attempt(
    client: &reqwest::Client,
    target: &AlertTarget,
    request: &Prepared,
) -> Result<u16, (Option<u16>, String)> {
    let mut builder = client
        .post(&request.url)
        .header("content-type", "application/json")
        .body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(*name, value);
    }
    let response = builder.send().await.map_err(|e| {
        let why = if e.is_timeout() {
            "no answer in time".to_owned()
        } else if e.is_connect() {
            "cannot connect".to_owned()
        } else {
            "the request failed".to_owned()
        };
        (None, why)
    })?;
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    accepted(target.kind, status, &body)
        .map(|()| status)
        .map_err(|why| (Some(status), why))
}

/// Delivers `payload` to `target` after `tried` tries made before (by an instance that stopped),
/// trying up to `config.attempts` times in all (at least once more) with a doubling wait, noting
/// each try in the store under the alert's id (with `Some`); the last failure is noted as
/// `failed`. Returns the delivery as it ended.
pub async fn deliver(
    client: reqwest::Client,
    config: AlertsConfig,
    target: AlertTarget,
    store: Store,
    alert_id: Option<i64>,
    payload: AlertPayload,
    tried: u32,
) -> Delivery {
    let mut backoff = Duration::from_millis(config.backoff_ms);
    let attempts = config.attempts.max(tried + 1);
    for tries in tried + 1..=attempts {
        let request = prepare(&target, &payload, jiff::Timestamp::now());
        let outcome = attempt(&client, &target, &request).await;
        let last = tries == attempts;
        let (status, http_status, error) = match &outcome {
            Ok(status) => ("sent", Some(*status), None),
            Err((status, why)) => (
                if last { "failed" } else { "pending" },
                *status,
                Some(why.clone()),
            ),
        };
        let delivery = Delivery {
            target: target.name.clone(),
            kind: target.kind.name().to_owned(),
            status: status.to_owned(),
            attempts: tries,
            http_status,
            error,
            updated_at: jiff::Timestamp::now(),
        };
        if let Some(id) = alert_id {
            if let Err(e) = store.update_delivery(id, delivery.clone()).await {
                tracing::warn!(alert_id = id, target = %target.name, "cannot note an alert delivery: {e}");
            }
        }
        match outcome {
            Ok(_) => return delivery,
            Err((_, why)) if last => {
                tracing::warn!(?alert_id, target = %target.name, tries, "alert not delivered: {why}");
                return delivery;
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
    }
    // Not reached: the range above is never empty and its last try returns.
    Delivery {
        target: target.name.clone(),
        kind: target.kind.name().to_owned(),
        status: "failed".to_owned(),
        attempts: tried,
        http_status: None,
        error: Some("no try was made".to_owned()),
        updated_at: jiff::Timestamp::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn target(kind: TargetKind, url: &str, secret: Option<&str>) -> AlertTarget {
        AlertTarget {
            name: "t".into(),
            kind,
            url: Secret::new(url),
            secret: secret.map(Secret::new),
        }
    }

    fn payload() -> AlertPayload {
        let ctx = super::super::rules::Context {
            instance: "i",
            now: jiff::Timestamp::UNIX_EPOCH,
        };
        super::super::rules::degraded_alert(&ctx, jiff::Timestamp::UNIX_EPOCH, None).payload
    }

    #[test]
    fn each_service_gets_its_shape_and_signature() {
        let now: jiff::Timestamp = "2023-11-14T22:13:20Z".parse().unwrap();
        let p = payload();
        let feishu = prepare(
            &target(TargetKind::Feishu, "https://f/h", Some("secret")),
            &p,
            now,
        );
        let body: serde_json::Value = serde_json::from_slice(&feishu.body).unwrap();
        assert_eq!(body["msg_type"], "text");
        assert_eq!(body["content"]["text"], p.event_message.as_str());
        assert_eq!(body["timestamp"], "1700000000");
        assert_eq!(body["sign"], "fiWS2+gh28DOydAv7hzONH/mDn9+b1Y4Y5ivXWXy8vA=");
        let ding = prepare(
            &target(
                TargetKind::Dingtalk,
                "https://d/robot/send?access_token=x",
                Some("SECxyz"),
            ),
            &p,
            now,
        );
        assert_eq!(
            ding.url,
            "https://d/robot/send?access_token=x&timestamp=1700000000000&sign=0PUR1j8g85Xg3vlFV%2FUrEcxXfF5HpCAGzcjrNfyJoyg%3D"
        );
        let hook = prepare(&target(TargetKind::Webhook, "http://w", None), &p, now);
        let back: AlertPayload = serde_json::from_slice(&hook.body).unwrap();
        assert_eq!(back, p);
        assert!(hook.headers.is_empty());
        let signed = prepare(&target(TargetKind::Webhook, "http://w", Some("k")), &p, now);
        let mut message = b"1700000000.".to_vec();
        message.extend_from_slice(&signed.body);
        let want = format!("sha256={}", sign::hex(&sign::hmac_sha256(b"k", &message)));
        assert!(signed
            .headers
            .contains(&("x-token-console-signature", want)));
        let slack = prepare(&target(TargetKind::Slack, "https://s", None), &p, now);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&slack.body).unwrap(),
            json!({ "text": p.event_message })
        );
    }

    #[test]
    fn robots_refusing_with_200_are_failures() {
        assert!(accepted(TargetKind::Webhook, 204, b"").is_ok());
        assert!(accepted(TargetKind::Webhook, 500, b"").is_err());
        assert!(accepted(TargetKind::Feishu, 200, br#"{"code":0,"msg":"success"}"#).is_ok());
        let err = accepted(
            TargetKind::Feishu,
            200,
            br#"{"code":19021,"msg":"sign match fail"}"#,
        );
        assert_eq!(
            err.unwrap_err(),
            "refused the message: code 19021 sign match fail"
        );
        assert!(accepted(
            TargetKind::Dingtalk,
            200,
            br#"{"errcode":310000,"errmsg":"sign not match"}"#
        )
        .is_err());
        assert!(accepted(TargetKind::Wecom, 200, br#"{"errcode":0,"errmsg":"ok"}"#).is_ok());
    }
}
