//! The console API's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! attributes and the wire types' `ToSchema` derives, so that a field added to a wire type is in
//! the document by construction. Rules that hold for every operation are applied here once: the
//! admin-key security scheme, the refusals of the access check (401, 403, 429), empty query
//! parameters meaning absent, and closed objects (`additionalProperties: false`).

use std::sync::LazyLock;

use serde_json::{json, Map, Value};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "token-console console API",
        version = "1.0.0",
        description = "The REST API behind the token console. Success: {\"code\":0,\"data\":…}; failure: {\"code\":<HTTP status>,\"msg\":\"…\"}. With an admin key configured every call needs Authorization: Bearer <admin key>; without one only this machine (loopback, addressed by a loopback name or an allowed host) may call."
    ),
    servers((url = "/")),
    paths(
        super::get_stats,
        super::get_trend,
        super::get_usage,
        super::get_logs,
        super::stream_logs,
        super::list_keys,
        super::create_key,
        super::patch_key,
        super::delete_key,
        super::export,
        super::reprice,
        super::get_anomalies,
        super::get_alerts,
        super::get_sources,
        super::ingest,
        super::openapi,
    )
)]
struct ApiDoc;

/// The push endpoint, which the ingest key admits instead of the console's gate.
const INGEST_PATH: &str = "/api/console/ingest";

/// The refusals of the access check (`auth::Admitted`), which guards every operation.
const REFUSALS: [(&str, &str); 3] = [
    ("401", "Admin key missing or wrong"),
    (
        "403",
        "Not allowed from this client (see the message for what to do)",
    ),
    ("429", "Too many wrong admin keys from this address"),
];

/// The document, as served at `/api/console/openapi.json`.
pub fn document() -> &'static str {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
        apply_rules(&mut doc);
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    });
    &DOCUMENT
}

fn apply_rules(doc: &mut Value) {
    doc["security"] = json!([{ "adminKey": [] }, {}]);
    doc["components"]["securitySchemes"] = json!({
        "adminKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "console.admin_key / CONSOLE_ADMIN_KEY"
        },
        "ingestKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "console.ingest_key (the push endpoint only; the admin key is refused)"
        }
    });
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, operation) in paths.iter_mut() {
            let Some(operation) = operation.as_object_mut() else {
                continue;
            };
            for op in operation.values_mut() {
                if path == INGEST_PATH {
                    // Admitted by the ingest key, not by the console's gate.
                    op["security"] = json!([{ "ingestKey": [] }]);
                } else {
                    add_refusals(op);
                }
                empty_means_absent(op);
            }
        }
    }
    merge_flattened(doc);
    close_objects(doc);
}

/// Writes each `allOf` of objects — what `#[serde(flatten)]` becomes — as the one object it
/// describes, so that closing objects closes the whole (a closed part would refuse the other
/// parts' properties).
fn merge_flattened(doc: &mut Value) {
    let schemas = doc["components"]["schemas"].clone();
    let Some(named) = doc["components"]["schemas"].as_object_mut() else {
        return;
    };
    for schema in named.values_mut() {
        let Some(parts) = schema.get("allOf").and_then(Value::as_array).cloned() else {
            continue;
        };
        let (mut properties, mut required) = (Map::new(), Vec::new());
        for part in &parts {
            let part = match part["$ref"].as_str() {
                Some(r) => &schemas[r.trim_start_matches("#/components/schemas/")],
                None => part,
            };
            if let Some(p) = part["properties"].as_object() {
                properties.extend(p.clone());
            }
            if let Some(r) = part["required"].as_array() {
                required.extend(r.iter().cloned());
            }
        }
        let mut merged = json!({
            "type": "object",
            "properties": properties,
            "required": required,
        });
        if let Some(description) = schema.get("description") {
            merged["description"] = description.clone();
        }
        *schema = merged;
    }
}

fn add_refusals(operation: &mut Value) {
    let Some(responses) = operation
        .get_mut("responses")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for (status, description) in REFUSALS {
        responses.entry(status).or_insert_with(|| {
            json!({
                "description": description,
                "content": {
                    "application/json": {
                        "schema": { "$ref": "#/components/schemas/Failure" }
                    }
                }
            })
        });
    }
}

fn empty_means_absent(operation: &mut Value) {
    let Some(parameters) = operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for parameter in parameters.iter_mut().filter(|p| p["in"] == "query") {
        parameter["allowEmptyValue"] = Value::Bool(true);
        let schema = parameter["schema"].take();
        parameter["schema"] = json!({
            "anyOf": [schema, { "type": "string", "pattern": "^\\s*$" }]
        });
    }
}

/// Every object schema with properties admits no other property.
fn close_objects(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// The schemas of the document, by name (for tests).
pub fn schemas() -> Map<String, Value> {
    serde_json::from_str::<Value>(document())
        .ok()
        .and_then(|doc| doc["components"]["schemas"].as_object().cloned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_described_with_its_refusals() {
        let doc: Value = serde_json::from_str(document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let operations: Vec<_> = paths
            .iter()
            .flat_map(|(path, ops)| {
                let ops = ops.as_object().unwrap();
                ops.iter()
                    .map(move |(method, op)| (format!("{method} {path}"), op))
            })
            .collect();
        assert_eq!(operations.len(), 16, "{:?}", paths.keys());
        for (name, op) in operations {
            let statuses: &[&str] = if name.ends_with(INGEST_PATH) {
                &["200", "400", "401", "404"]
            } else {
                &["200", "401", "403", "429"]
            };
            for status in statuses {
                assert!(op["responses"][status].is_object(), "{name} lacks {status}");
            }
        }
        let stats = &schemas()["Stats"];
        assert_eq!(stats["additionalProperties"], false);
        assert!(stats["properties"]["count_tokens_calls"].is_object());
        let usage = &schemas()["UsageRow"];
        assert_eq!(usage["additionalProperties"], false);
        // A flattened part is merged into the object that holds it, which is closed as one.
        let alert = &schemas()["AlertView"];
        assert_eq!(alert["additionalProperties"], false);
        assert!(alert.get("allOf").is_none());
        for field in ["rule", "subject", "message", "deliveries"] {
            assert!(alert["properties"][field].is_object(), "{field}: {alert}");
            assert!(alert["required"]
                .as_array()
                .unwrap()
                .contains(&json!(field)));
        }
        assert!(usage["properties"]["p95_latency_ms"].is_object());
    }
}
