//! The OpenAPI 3.0 document of the REST API, made at run time from two sources that
//! cannot drift from what is served: the route table ([`super::routes::ROUTES`], which
//! also builds the router) and the compiled `.proto` files
//! ([`kat_proto::FILE_DESCRIPTOR_SET`]), whose messages become the schemas with their
//! proto3 JSON names and types (64-bit integers as strings, bytes as base64,
//! `Timestamp` as an RFC 3339 string, enums by name, maps as objects).

use std::collections::BTreeMap;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use serde_json::{Map, Value, json};

use super::routes::{BodyKind, ReplyKind, RouteDoc};

const PACKAGE: &str = ".kat.v1alpha1.";

/// The document for `routes`.
pub fn document(routes: &[RouteDoc]) -> Value {
    let schemas = schemas();
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    let mut used_ids: Vec<String> = Vec::new();
    for r in routes {
        let mut id = lower_first(r.operation);
        let mut n = 2;
        while used_ids.contains(&id) {
            id = format!("{}{n}", lower_first(r.operation));
            n += 1;
        }
        used_ids.push(id.clone());
        paths
            .entry(r.path)
            .or_default()
            .insert(r.method.to_owned(), operation(r, &id));
    }
    let mut components = schemas;
    components.insert(
        "Error".to_owned(),
        json!({
            "type": "object",
            "description": "Every error: the gRPC code (number and name) and a message saying what went wrong. A follower's 503 names the leader's API address in `leader` (and the kat-leader-api header).",
            "properties": {
                "code": {"type": "integer"},
                "status": {"type": "string", "example": "InvalidArgument"},
                "message": {"type": "string"},
                "leader": {"type": "string", "example": "127.0.0.1:9115"}
            },
            "required": ["code", "status", "message"]
        }),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "KAT API",
            "version": kat_proto::quadlet::API_VERSION,
            "description": "The user API of a KAT cluster. The same operations are served as gRPC (service kat.v1alpha1.UserApi) on the same port. Authenticate with `Authorization: Bearer <token>` (katcall.yaml holds the admin token; `katcall token create api` makes more).",
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": components,
        },
        "paths": paths,
    })
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_ascii_lowercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

fn schema_ref(message: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{message}")})
}

fn operation(r: &RouteDoc, id: &str) -> Value {
    let mut op = Map::new();
    op.insert("operationId".into(), json!(id));
    op.insert("summary".into(), json!(r.summary));
    op.insert(
        "x-grpc-method".into(),
        json!(format!("kat.v1alpha1.UserApi/{}", r.operation)),
    );
    let mut parameters: Vec<Value> = path_params(r.path)
        .into_iter()
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    parameters.extend(r.query.iter().map(|(name, description)| {
        json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}})
    }));
    if !parameters.is_empty() {
        op.insert("parameters".into(), Value::Array(parameters));
    }
    match r.body {
        BodyKind::None => {}
        BodyKind::Bundle => {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "description": "A gzip'd tar of one Quadlet directory (workload.kat and its companions).",
                       "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}}),
            );
        }
        BodyKind::Json(message) => {
            op.insert(
                "requestBody".into(),
                json!({"required": false, "content": {"application/json": {"schema": schema_ref(message)}}}),
            );
        }
    }
    let ok = match r.reply {
        ReplyKind::Json(message) => {
            json!({"description": "OK", "content": {"application/json": {"schema": schema_ref(message)}}})
        }
        ReplyKind::Stream(message) => json!({
            "description": format!("Newline-delimited JSON, one {message} a line"),
            "content": {"application/x-ndjson": {"schema": schema_ref(message)}}
        }),
        ReplyKind::Logs => json!({
            "description": "The log as text; with Accept: application/x-ndjson, one LogChunk a line",
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": schema_ref("LogChunk")}
            }
        }),
        ReplyKind::Text => {
            json!({"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}})
        }
        ReplyKind::OpenApi => {
            json!({"description": "This document", "content": {"application/json": {"schema": {"type": "object"}}}})
        }
        ReplyKind::Object => {
            json!({"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}})
        }
    };
    let error = json!({"description": "An error", "content": {"application/json": {"schema": schema_ref("Error")}}});
    let mut responses = Map::new();
    responses.insert("200".into(), ok);
    if r.auth {
        responses.insert(
            "401".into(),
            json!({"description": "Missing or invalid API token", "content": {"application/json": {"schema": schema_ref("Error")}}}),
        );
        op.insert("security".into(), json!([{"bearer": []}]));
    } else {
        op.insert("security".into(), json!([]));
    }
    responses.insert("default".into(), error);
    op.insert("responses".into(), Value::Object(responses));
    Value::Object(op)
}

/// `{ns}`, `{name}` … in a path, in order.
fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

/// A schema for every message and enum of package `kat.v1alpha1`, keyed by its name
/// (nested ones as `Outer.Inner`).
fn schemas() -> Map<String, Value> {
    let mut out = Map::new();
    let Ok(set) = FileDescriptorSet::decode(kat_proto::FILE_DESCRIPTOR_SET) else {
        return out;
    };
    let mut messages: BTreeMap<String, &DescriptorProto> = BTreeMap::new();
    let mut enums: BTreeMap<String, &EnumDescriptorProto> = BTreeMap::new();
    for file in set.file.iter().filter(|f| f.package() == "kat.v1alpha1") {
        for m in &file.message_type {
            collect(m, String::new(), &mut messages, &mut enums);
        }
        for e in &file.enum_type {
            enums.insert(e.name().to_owned(), e);
        }
    }
    for (name, e) in &enums {
        let values: Vec<&str> = e.value.iter().map(|v| v.name()).collect();
        out.insert(name.clone(), json!({"type": "string", "enum": values}));
    }
    for (name, m) in &messages {
        if m.options.as_ref().is_some_and(|o| o.map_entry()) {
            continue;
        }
        let mut properties = Map::new();
        for field in &m.field {
            properties.insert(field.json_name().to_owned(), field_schema(field, &messages));
        }
        out.insert(
            name.clone(),
            json!({"type": "object", "properties": properties}),
        );
    }
    out
}

fn collect<'a>(
    m: &'a DescriptorProto,
    outer: String,
    messages: &mut BTreeMap<String, &'a DescriptorProto>,
    enums: &mut BTreeMap<String, &'a EnumDescriptorProto>,
) {
    let name = if outer.is_empty() {
        m.name().to_owned()
    } else {
        format!("{outer}.{}", m.name())
    };
    for e in &m.enum_type {
        enums.insert(format!("{name}.{}", e.name()), e);
    }
    for nested in &m.nested_type {
        collect(nested, name.clone(), messages, enums);
    }
    messages.insert(name, m);
}

/// The schema of one field's value (arrays and maps included).
fn field_schema(
    field: &FieldDescriptorProto,
    messages: &BTreeMap<String, &DescriptorProto>,
) -> Value {
    if field.r#type() == Type::Message
        && let Some(entry) = local_name(field.type_name()).and_then(|n| messages.get(n))
        && entry.options.as_ref().is_some_and(|o| o.map_entry())
    {
        let value = entry
            .field
            .iter()
            .find(|f| f.number() == 2)
            .map(scalar_schema)
            .unwrap_or_else(|| json!({}));
        return json!({"type": "object", "additionalProperties": value});
    }
    let one = scalar_schema(field);
    if field.label() == Label::Repeated {
        json!({"type": "array", "items": one})
    } else {
        one
    }
}

/// `Outer.Inner` for `.kat.v1alpha1.Outer.Inner`; `None` for other packages.
fn local_name(type_name: &str) -> Option<&str> {
    type_name.strip_prefix(PACKAGE)
}

fn scalar_schema(field: &FieldDescriptorProto) -> Value {
    match field.r#type() {
        Type::Double | Type::Float => json!({"type": "number"}),
        Type::Int32 | Type::Sint32 | Type::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Type::Uint32 | Type::Fixed32 => json!({"type": "integer", "minimum": 0}),
        Type::Int64 | Type::Sint64 | Type::Sfixed64 | Type::Uint64 | Type::Fixed64 => {
            json!({"type": "string", "format": "int64"})
        }
        Type::Bool => json!({"type": "boolean"}),
        Type::String => json!({"type": "string"}),
        Type::Bytes => json!({"type": "string", "format": "byte"}),
        Type::Enum | Type::Message | Type::Group => match field.type_name() {
            ".google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
            ".google.protobuf.Duration" => json!({"type": "string", "example": "1.5s"}),
            ".google.protobuf.Struct" | ".google.protobuf.Any" | ".google.protobuf.Empty" => {
                json!({"type": "object"})
            }
            ".google.protobuf.Value" => json!({}),
            other => match local_name(other) {
                Some(name) => schema_ref(name),
                None => json!({}),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::rest::ROUTES;

    fn doc() -> Value {
        document(ROUTES)
    }

    #[test]
    fn every_route_is_in_the_document_with_a_unique_operation_id() {
        let doc = doc();
        let mut ids = std::collections::HashSet::new();
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method];
            assert!(op.is_object(), "{} {} missing", r.method, r.path);
            assert!(ids.insert(op["operationId"].as_str().unwrap_or_default().to_owned()));
        }
        let create = &doc["paths"]["/v1alpha1/n/{ns}/workloads"]["post"];
        assert_eq!(create["parameters"][0]["name"], "ns");
        assert!(create["requestBody"]["content"]["application/gzip"].is_object());
        assert_eq!(create["security"][0]["bearer"], json!([]));
        assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([]));
    }

    #[test]
    fn schemas_come_from_the_protos_with_their_json_names() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        // Every message a route names has a schema.
        for r in ROUTES {
            for name in [
                match r.body {
                    BodyKind::Json(m) => Some(m),
                    _ => None,
                },
                match r.reply {
                    ReplyKind::Json(m) | ReplyKind::Stream(m) => Some(m),
                    _ => None,
                },
            ]
            .into_iter()
            .flatten()
            {
                assert!(schemas[name].is_object(), "no schema for {name}");
            }
        }
        let logs = &schemas["LogsRequest"]["properties"];
        assert_eq!(logs["instanceId"]["type"], "string");
        assert_eq!(logs["sinceSeconds"]["type"], "integer");
        let backup = &schemas["Backup"]["properties"];
        assert_eq!(backup["revision"]["format"], "int64");
        assert_eq!(backup["createdAt"]["format"], "date-time");
        // Maps are objects, repeated fields arrays, enums by name.
        assert_eq!(
            schemas["SetNodeLabelsRequest"]["properties"]["labels"]["type"],
            "object"
        );
        assert_eq!(
            schemas["ListNodesResponse"]["properties"]["items"]["type"],
            "array"
        );
        assert!(
            schemas["LogChunk.Stream"]["enum"]
                .as_array()
                .is_some_and(|v| v.contains(&json!("STDERR")))
        );
    }
}
