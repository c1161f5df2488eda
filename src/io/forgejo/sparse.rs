//! Parsing only what is read: a JSON document parsed into a [`Value`] that holds the listed
//! dotted paths and nothing else. Everything off those paths is skipped by the parser, never
//! built (a webhook payload is mostly repository and user objects nobody reads). Arrays are
//! transparent: `issue.labels.name` keeps the `name` of every label. A value on a path whose
//! type is not what the path expects (a string where an object should be) is kept as it is, so
//! the reader's type checks see it and name it.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `body`, keeping only `paths` (dotted; a path keeps its whole subtree).
pub fn parse(body: &[u8], paths: &[&str]) -> serde_json::Result<Value> {
    let split: Vec<Vec<&str>> = paths.iter().map(|p| p.split('.').collect()).collect();
    let refs: Vec<&[&str]> = split.iter().map(Vec::as_slice).collect();
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = Keep(&refs).deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// The rest of each path still to follow below the current value.
#[derive(Clone, Copy)]
struct Keep<'p, 'a>(&'p [&'a [&'a str]]);

impl<'de> DeserializeSeed<'de> for Keep<'_, '_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.0.iter().any(|p| p.is_empty()) {
            // A path ends here: its whole subtree is kept.
            return <Value as serde::Deserialize>::deserialize(d);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Keep<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let below: Vec<&[&str]> = self
                .0
                .iter()
                .filter_map(|p| p.split_first())
                .filter(|(first, _)| **first == key)
                .map(|(_, rest)| rest)
                .collect();
            if below.is_empty() {
                map.next_value::<IgnoredAny>()?;
            } else {
                let v = map.next_value_seed(Keep(&below))?;
                out.insert(key, v);
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_the_listed_paths_are_kept() {
        let body = br#"{"action":"labeled","repository":{"full_name":"a/b","owner":{"login":"a","id":1}},
            "issue":{"number":3,"labels":[{"name":"x","color":"f00"},{"name":"y"}],"user":{"login":"u"}},
            "sender":{"login":"s"}}"#;
        let v = parse(
            body,
            &[
                "action",
                "repository.full_name",
                "issue.labels.name",
                "issue.number",
                "issue.user",
            ],
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"action":"labeled","repository":{"full_name":"a/b"},
                   "issue":{"number":3,"labels":[{"name":"x"},{"name":"y"}],"user":{"login":"u"}}})
        );
    }

    #[test]
    fn a_value_of_another_type_on_a_path_is_kept_for_the_reader_to_refuse() {
        let v = parse(
            br#"{"issue":"not an object","repository":[1,2]}"#,
            &["issue.number", "repository.full_name"],
        )
        .unwrap();
        assert_eq!(v, json!({"issue":"not an object","repository":[1,2]}));
    }

    #[test]
    fn malformed_json_is_an_error_even_off_the_paths() {
        assert!(parse(br#"{"a":1,"skipped":[1,}"#, &["a"]).is_err());
        assert!(parse(br#"{"a":1} trailing"#, &["a"]).is_err());
    }
}
