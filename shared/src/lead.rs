//! The lead object the extraction asks the model for: its strict JSON schema (the base fields
//! plus the tenant's own), and the clean-up of what comes back (emails and phone numbers
//! normalised and validated; anything unusable dropped, never stored).

use serde_json::{json, Map, Value as Json};

use crate::db::leads::LEAD_FIELDS;

/// Intents the model may choose from.
pub const INTENTS: [&str; 5] = ["buy", "info", "support", "complaint", "other"];
/// Most tenant-defined fields per agent.
pub const MAX_EXTRA_FIELDS: usize = 20;

/// Why a tenant's field definitions cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("extra lead fields: {0}")]
pub struct SchemaError(pub String);

fn nullable_string(description: &str) -> Json {
    json!({"type": ["string", "null"], "description": description})
}

/// The strict schema for `text.format`: every property required, null allowed for "unknown",
/// `additionalProperties: false`. `extra` is the agent's `extra_lead_fields`:
/// `{"bedrooms": {"type": "integer", "description": "…"}, "area": {"type": "string", "enum": […]}}`
/// with types string, integer, number or boolean.
pub fn lead_schema(extra: &Json) -> Result<Json, SchemaError> {
    let mut props = Map::new();
    props.insert(
        "name".into(),
        nullable_string("The customer's name as they gave it."),
    );
    props.insert(
        "email".into(),
        nullable_string("The customer's email address."),
    );
    props.insert(
        "phone".into(),
        nullable_string("A phone number the customer gave, with country code if stated."),
    );
    props.insert(
        "company".into(),
        nullable_string("The customer's company, if any."),
    );
    let mut intents: Vec<Json> = INTENTS.iter().map(|i| json!(i)).collect();
    intents.push(Json::Null);
    props.insert(
        "intent".into(),
        json!({"type": ["string", "null"], "enum": intents, "description": "What the customer wants."}),
    );
    props.insert(
        "product_interest".into(),
        nullable_string("The product or service the customer is interested in."),
    );
    props.insert(
        "budget".into(),
        nullable_string("The budget the customer stated, with currency."),
    );
    props.insert(
        "timeline".into(),
        nullable_string("When the customer wants it."),
    );
    props.insert(
        "language".into(),
        nullable_string("ISO 639-1 code of the language the customer writes in."),
    );
    props.insert(
        "summary".into(),
        nullable_string("One sentence on what the customer wants, in English."),
    );
    let Json::Object(fields) = extra else {
        return Err(SchemaError("must be a JSON object".into()));
    };
    if fields.len() > MAX_EXTRA_FIELDS {
        return Err(SchemaError(format!("at most {MAX_EXTRA_FIELDS} fields")));
    }
    for (key, def) in fields {
        let valid_key = !key.is_empty()
            && key.len() <= 40
            && key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_key {
            return Err(SchemaError(format!(
                "`{key}`: names are lowercase letters, digits and _, starting with a letter, at most 40"
            )));
        }
        if props.contains_key(key) {
            return Err(SchemaError(format!("`{key}` is a built-in field")));
        }
        let kind = def.get("type").and_then(Json::as_str).unwrap_or("");
        if !["string", "integer", "number", "boolean"].contains(&kind) {
            return Err(SchemaError(format!(
                "`{key}`: type must be string, integer, number or boolean"
            )));
        }
        let mut prop = json!({"type": [kind, "null"]});
        if let Some(d) = def.get("description").and_then(Json::as_str) {
            prop["description"] = json!(d);
        }
        if let Some(values) = def.get("enum") {
            let Some(list) = values.as_array().filter(|l| !l.is_empty()) else {
                return Err(SchemaError(format!(
                    "`{key}`: enum must be a non-empty list"
                )));
            };
            let mut list = list.clone();
            list.push(Json::Null);
            prop["enum"] = Json::Array(list);
        }
        props.insert(key.clone(), prop);
    }
    let required: Vec<Json> = props.keys().map(|k| json!(k)).collect();
    Ok(json!({
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": props,
    }))
}

/// The `text` parameter of the Responses API request for `schema`.
pub fn text_format(schema: Json) -> Json {
    json!({"format": {"type": "json_schema", "name": "lead", "strict": true, "schema": schema}})
}

/// A lowercased, trimmed email if it looks deliverable (one @, a dotted domain, no spaces).
pub fn normalise_email(raw: &str) -> Option<String> {
    let e = raw
        .trim()
        .trim_matches(|c| c == '<' || c == '>')
        .to_lowercase();
    let (local, domain) = e.split_once('@')?;
    let ok = !local.is_empty()
        && e.len() <= 254
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && e.chars().all(|c| !c.is_whitespace() && !c.is_control());
    ok.then_some(e)
}

/// Digits of a phone number (a leading + kept) if there are 7 to 15 of them (E.164's range).
pub fn normalise_phone(raw: &str) -> Option<String> {
    let t = raw.trim();
    if t.chars()
        .any(|c| !(c.is_ascii_digit() || " +-().".contains(c)))
    {
        return None;
    }
    let digits: String = t.chars().filter(char::is_ascii_digit).collect();
    if !(7..=15).contains(&digits.len()) {
        return None;
    }
    Some(if t.starts_with('+') {
        format!("+{digits}")
    } else {
        digits
    })
}

/// The usable, non-null values of a model answer: lead columns (cleaned) and tenant fields
/// (checked against their type). Returns the columns and the extras.
pub fn clean(answer: &Json, extra_defs: &Json) -> (Vec<(&'static str, String)>, Map<String, Json>) {
    let mut fields = Vec::new();
    for field in LEAD_FIELDS {
        let Some(v) = answer.get(field).and_then(Json::as_str) else {
            continue;
        };
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        let cleaned = match field {
            "email" => normalise_email(v),
            "phone" => normalise_phone(v),
            "intent" => INTENTS.contains(&v).then(|| v.to_owned()),
            "language" => {
                let l = v.to_lowercase();
                (l.len() == 2 && l.chars().all(|c| c.is_ascii_lowercase())).then_some(l)
            }
            _ => Some(v.chars().take(500).collect()),
        };
        if let Some(c) = cleaned {
            fields.push((field, c));
        }
    }
    let mut extra = Map::new();
    if let Json::Object(defs) = extra_defs {
        for (key, def) in defs {
            let Some(v) = answer.get(key).filter(|v| !v.is_null()) else {
                continue;
            };
            let ok = match def.get("type").and_then(Json::as_str) {
                Some("string") => v.as_str().is_some_and(|s| !s.trim().is_empty()),
                Some("integer") => v.is_i64() || v.is_u64(),
                Some("number") => v.is_number(),
                Some("boolean") => v.is_boolean(),
                _ => false,
            };
            if ok {
                extra.insert(key.clone(), v.clone());
            }
        }
    }
    (fields, extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_is_strict_with_every_property_required_and_nullable() {
        let s = lead_schema(
            &json!({"bedrooms": {"type": "integer", "description": "Rooms wanted"},
                                     "area": {"type": "string", "enum": ["north", "south"]}}),
        )
        .unwrap();
        assert_eq!(s["additionalProperties"], false);
        let props = s["properties"].as_object().unwrap();
        let required: Vec<&str> = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(required.len(), props.len());
        for (k, p) in props {
            assert!(required.contains(&k.as_str()), "{k} not required");
            assert_eq!(p["type"][1], "null", "{k} must allow null");
            assert!(p.get("default").is_none());
        }
        assert_eq!(props["bedrooms"]["type"], json!(["integer", "null"]));
        assert_eq!(props["area"]["enum"], json!(["north", "south", null]));
        assert_eq!(
            props["intent"]["enum"].as_array().unwrap().last(),
            Some(&Json::Null)
        );
    }

    #[test]
    fn bad_extra_fields_are_refused_with_the_reason() {
        for (extra, needle) in [
            (json!([]), "JSON object"),
            (json!({"Name": {"type": "string"}}), "lowercase"),
            (json!({"email": {"type": "string"}}), "built-in"),
            (json!({"x": {"type": "object"}}), "type must be"),
            (json!({"x": {"type": "string", "enum": []}}), "non-empty"),
        ] {
            let e = lead_schema(&extra).unwrap_err();
            assert!(e.0.contains(needle), "{extra}: {e}");
        }
    }

    #[test]
    fn emails_and_phones_are_normalised_or_dropped() {
        assert_eq!(
            normalise_email(" Ana@Ejemplo.MX ").as_deref(),
            Some("ana@ejemplo.mx")
        );
        assert_eq!(normalise_email("<ana@x.io>").as_deref(), Some("ana@x.io"));
        for bad in [
            "ana", "ana@", "@x.io", "ana@x", "a b@x.io", "a@x..io", "a@@x.io",
        ] {
            assert_eq!(normalise_email(bad), None, "{bad}");
        }
        assert_eq!(
            normalise_phone("+52 (55) 1234-5678").as_deref(),
            Some("+525512345678")
        );
        assert_eq!(
            normalise_phone("55 1234 5678").as_deref(),
            Some("5512345678")
        );
        for bad in ["12345", "call me", "+1234567890123456", "55-12x4-5678"] {
            assert_eq!(normalise_phone(bad), None, "{bad}");
        }
    }

    #[test]
    fn clean_keeps_only_usable_values() {
        let defs = json!({"bedrooms": {"type": "integer"}, "pets": {"type": "boolean"}});
        let answer = json!({"name": "  Ana Ruiz ", "email": "not an email", "phone": null,
            "intent": "buy", "language": "ES", "summary": "", "bedrooms": 2, "pets": "yes"});
        let (fields, extra) = clean(&answer, &defs);
        assert_eq!(
            fields,
            vec![
                ("name", "Ana Ruiz".to_owned()),
                ("intent", "buy".to_owned()),
                ("language", "es".to_owned())
            ]
        );
        assert_eq!(Json::Object(extra), json!({"bedrooms": 2}));
        let (fields, _) = clean(&json!({"intent": "lunch"}), &json!({}));
        assert!(fields.is_empty(), "an intent outside the enum is dropped");
    }
}
