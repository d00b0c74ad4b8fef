//! The configuration schema, read from the code rather than written down a second time.
//!
//! [`schema`] lists every key the parser accepts, with its default: the keys come from
//! running `Config`'s own `Deserialize` against a tracer (every struct hands serde its field
//! list, every enum its variants), the defaults from serializing a config that sets only the
//! required keys. The test `tests/config_reference.rs` holds `examples/portcullis.toml` to
//! it, so a key added to a struct without a line in the example (or a default changed in one
//! place only) fails the build's tests instead of drifting.

use std::{cell::RefCell, collections::BTreeMap};

use figment::{
    Figment,
    providers::{Format, Toml},
};
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::Config;

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A table of further keys (`[oidc]`).
    Table,
    /// An array of tables (`[[routes]]`); its keys are listed as `routes[].<key>`.
    TableArray,
    /// A table whose keys are the user's (`extra_auth_params`, `require_claims`).
    Map,
    /// A value: string, number, boolean, array of those, or one of an enum's `variants`.
    Value,
}

/// One key of the schema.
#[derive(Debug, Clone)]
pub struct SchemaKey {
    /// Dotted path; keys inside `[[routes]]` read `routes[].prefix`.
    pub path: String,
    /// What the key holds.
    pub shape: Shape,
    /// The accepted spellings when the key is an enum, in declaration order; empty otherwise.
    pub variants: &'static [&'static str],
    /// The value a config gets without this key, as the config serializes it; `None` for
    /// tables, required keys, secrets and optional keys that are unset by default.
    pub default: Option<Value>,
    /// The parser refuses a config without it.
    pub required: bool,
}

/// The smallest document the parser takes: every key without a default, once. A key added
/// without a default makes [`schema`] panic here, naming it, until it is added.
const MINIMAL: &str = r#"
public_url = "http://gateway.example/"
[oidc]
issuer = "http://op.example/"
client_id = "client"
[session]
[[routes]]
prefix = "/"
upstream = "http://upstream.example/"
"#;

/// Every key of the configuration, in the order the structs declare them.
pub fn schema() -> Vec<SchemaKey> {
    let trace = trace_config();
    let minimal = minimal_json();
    let defaults =
        serde_json::to_value(parse_json(minimal.clone()).expect("the minimal document parses")).expect("a config always serializes");
    trace
        .keys
        .iter()
        .map(|(path, shape)| {
            let required = lookup(&minimal, path).is_some();
            let default = match shape {
                Shape::Value | Shape::Map if !required => lookup(&defaults, path).filter(|v| !v.is_null()).cloned(),
                _ => None,
            };
            SchemaKey { path: path.clone(), shape: *shape, variants: trace.variants.get(path).copied().unwrap_or(&[]), default, required }
        })
        .collect()
}

/// Reads `toml_value` (the text right of `=` in a TOML line) as the key at `path` and returns
/// what the config holds afterwards, serialized as [`SchemaKey::default`] is: the way to
/// compare a value written in a file with a default, through the key's real type (so `"7d"`
/// equals `"7days"`). Errors are the parser's.
pub fn read_value(path: &str, toml_value: &str) -> Result<Value, String> {
    let value: Value =
        Figment::from(Toml::string(&format!("v = {toml_value}"))).extract_inner("v").map_err(|e| format!("not a TOML value: {e}"))?;
    let mut doc = minimal_json();
    place(&mut doc, path, value)?;
    let config = parse_json(doc)?;
    let out = serde_json::to_value(config).map_err(|e| e.to_string())?;
    Ok(lookup(&out, path).cloned().unwrap_or(Value::Null))
}

fn minimal_json() -> Value {
    Figment::from(Toml::string(MINIMAL)).extract().expect("MINIMAL is TOML")
}

fn parse_json(doc: Value) -> Result<Config, String> {
    serde_json::from_value(doc).map_err(|e| e.to_string())
}

/// Path segments: `routes[]` is the first element of `routes`.
fn segments(path: &str) -> impl Iterator<Item = (&str, bool)> {
    path.split('.').map(|s| match s.strip_suffix("[]") {
        Some(name) => (name, true),
        None => (s, false),
    })
}

fn lookup<'v>(mut value: &'v Value, path: &str) -> Option<&'v Value> {
    for (name, element) in segments(path) {
        value = value.get(name)?;
        if element {
            value = value.get(0)?;
        }
    }
    Some(value)
}

fn place(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let mut at = doc;
    for (name, element) in segments(path) {
        let table = at.as_object_mut().ok_or_else(|| format!("{path}: {name} is inside a value"))?;
        at = table.entry(name).or_insert_with(|| if element { Value::Array(vec![Value::Null]) } else { Value::Null });
        if element {
            at = at.get_mut(0).ok_or_else(|| format!("{path}: {name} is empty"))?;
        }
        if at.is_null() {
            *at = Value::Object(Default::default());
        }
    }
    *at = value;
    Ok(())
}

// --- The tracer: a serde `Deserializer` that answers every request with a sample value and
// writes down what was asked. A derived `Deserialize` names its fields to `deserialize_struct`
// and its variants to `deserialize_enum`, so walking `Config` this way lists exactly the keys
// `deny_unknown_fields` lets through, including secrets that are never serialized.
// Not traced: `#[serde(flatten)]` fields (serde reads them from a buffered map, so the parent
// shows as a `Map`) and `alias` spellings; no config struct uses either.

/// Strings offered to a leaf until its type takes one (a duration, a URL, a socket address,
/// a CIDR, anything). The walk restarts with the next sample for the leaf that refused.
const SAMPLES: &[&str] = &["1s", "http://sample.example/", "127.0.0.1:1", "10.0.0.0/8", "sample"];

#[derive(Default)]
struct Trace {
    keys: Vec<(String, Shape)>,
    variants: BTreeMap<String, &'static [&'static str]>,
    sample: BTreeMap<String, usize>,
    last_leaf: Option<String>,
}

impl Trace {
    fn record(&mut self, path: &str, shape: Shape) {
        // Elements of arrays (`scopes[]`) and entries of maps (`…*`) are not keys.
        let last = path.rsplit('.').next().unwrap_or(path);
        if path.is_empty() || last.ends_with("[]") || last.starts_with('*') {
            return;
        }
        match self.keys.iter_mut().find(|(p, _)| p == path) {
            Some((_, s)) if shape == Shape::TableArray => *s = shape,
            Some(_) => {}
            None => self.keys.push((path.to_string(), shape)),
        }
    }
}

fn trace_config() -> Trace {
    let cell = RefCell::new(Trace::default());
    for _ in 0..1000 {
        let attempt = <Config as serde::Deserialize>::deserialize(Tracer { trace: &cell, path: String::new() });
        let mut trace = cell.borrow_mut();
        match attempt {
            Ok(_) => {
                let trace = std::mem::take(&mut *trace);
                return trace;
            }
            Err(e) => {
                let leaf = trace.last_leaf.clone().unwrap_or_else(|| panic!("tracing the config failed outside a leaf: {e}"));
                let next = trace.sample.get(&leaf).map_or(1, |i| i + 1);
                assert!(next < SAMPLES.len(), "no sample string suits {leaf}: {e}");
                trace.sample.insert(leaf, next);
                trace.keys.clear();
                trace.variants.clear();
            }
        }
    }
    unreachable!("every leaf has finitely many samples")
}

struct Tracer<'t> {
    trace: &'t RefCell<Trace>,
    path: String,
}

type Error = de::value::Error;

impl<'t> Tracer<'t> {
    fn child(&self, name: &str) -> Self {
        let path = if self.path.is_empty() { name.to_string() } else { format!("{}.{name}", self.path) };
        Tracer { trace: self.trace, path }
    }

    fn leaf(&self) {
        self.trace.borrow_mut().record(&self.path, Shape::Value);
    }

    fn sample(&self) -> &'static str {
        self.leaf();
        let mut trace = self.trace.borrow_mut();
        trace.last_leaf = Some(self.path.clone());
        SAMPLES[trace.sample.get(&self.path).copied().unwrap_or(0)]
    }
}

macro_rules! leaf {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.leaf();
            visitor.$visit($($value)?)
        })*
    };
}

impl<'de, 't> Deserializer<'de> for Tracer<'t> {
    type Error = Error;

    leaf! {
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i64(1),
        deserialize_i16 => visit_i64(1),
        deserialize_i32 => visit_i64(1),
        deserialize_i64 => visit_i64(1),
        deserialize_u8 => visit_u64(1),
        deserialize_u16 => visit_u64(1),
        deserialize_u32 => visit_u64(1),
        deserialize_u64 => visit_u64(1),
        deserialize_f32 => visit_f64(0.5),
        deserialize_f64 => visit_f64(0.5),
        deserialize_char => visit_char('x'),
        deserialize_bytes => visit_bytes(b"x"),
        deserialize_byte_buf => visit_bytes(b"x"),
        deserialize_unit => visit_unit(),
        deserialize_ignored_any => visit_unit(),
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str(self.sample())
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str(self.sample())
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str(self.sample())
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str(self.sample())
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        self.leaf();
        visitor.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.leaf();
        let element = Tracer { trace: self.trace, path: format!("{}[]", self.path) };
        visitor.visit_seq(Elements { element: Some(element) })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(self, _name: &'static str, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.trace.borrow_mut().record(&self.path, Shape::Map);
        visitor.visit_map(Entries { key: Some(self.child("*key")), value: Some(self.child("*")) })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // An element of an array of tables makes the array a `TableArray`.
        if let Some(array) = self.path.strip_suffix("[]") {
            self.trace.borrow_mut().record(array, Shape::TableArray);
        }
        self.trace.borrow_mut().record(&self.path, Shape::Table);
        visitor.visit_map(Fields { tracer: self, fields: fields.iter(), current: None })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.leaf();
        self.trace.borrow_mut().variants.insert(self.path.clone(), variants);
        visitor.visit_enum(Variant { tracer: self, name: variants.first().copied().unwrap_or("") })
    }
}

/// A sequence of one sample element.
struct Elements<'t> {
    element: Option<Tracer<'t>>,
}

impl<'de, 't> SeqAccess<'de> for Elements<'t> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        self.element.take().map(|e| seed.deserialize(e)).transpose()
    }
}

/// A map of one sample entry.
struct Entries<'t> {
    key: Option<Tracer<'t>>,
    value: Option<Tracer<'t>>,
}

impl<'de, 't> MapAccess<'de> for Entries<'t> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        self.key.take().map(|k| seed.deserialize(k)).transpose()
    }
    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        let value = self.value.take().ok_or_else(|| de::Error::custom("value without a key"))?;
        seed.deserialize(value)
    }
}

/// Every field of a struct, each once.
struct Fields<'t> {
    tracer: Tracer<'t>,
    fields: std::slice::Iter<'static, &'static str>,
    current: Option<&'static str>,
}

impl<'de, 't> MapAccess<'de> for Fields<'t> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some(field) = self.fields.next() else { return Ok(None) };
        self.current = Some(field);
        seed.deserialize(field.into_deserializer()).map(Some)
    }
    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        let field = self.current.take().ok_or_else(|| de::Error::custom("value without a key"))?;
        seed.deserialize(self.tracer.child(field))
    }
}

/// The first variant of an enum, whatever its shape.
struct Variant<'t> {
    tracer: Tracer<'t>,
    name: &'static str,
}

impl<'de, 't> de::EnumAccess<'de> for Variant<'t> {
    type Error = Error;
    type Variant = Self;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let name: de::value::StrDeserializer<'_, Error> = self.name.into_deserializer();
        Ok((seed.deserialize(name)?, self))
    }
}

impl<'de, 't> de::VariantAccess<'de> for Variant<'t> {
    type Error = Error;
    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self.tracer)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.tracer.deserialize_seq(visitor)
    }
    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, Error> {
        self.tracer.deserialize_struct("", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_has_nested_route_keys_variants_and_secrets() {
        let schema = schema();
        let key = |p: &str| schema.iter().find(|k| k.path == p).unwrap_or_else(|| panic!("no key {p}"));
        assert_eq!(key("routes").shape, Shape::TableArray);
        assert_eq!(key("routes[].authorization").shape, Shape::Table);
        assert_eq!(key("routes[].authorization.allowed_groups").shape, Shape::Value);
        assert!(key("routes[].prefix").required);
        assert_eq!(key("session.store").variants, ["memory", "redis", "cookie"]);
        assert_eq!(key("authorization.require_claims").shape, Shape::Map);
        // Never serialized in clear, yet a key.
        assert!(key("session.secret").default.is_none());
        assert_eq!(key("session.idle_timeout").default, Some(Value::from("8h")));
        assert!(key("refresh.settle_after_unknown").default.is_none());
        assert!(schema.iter().all(|k| !k.path.contains('*')));
    }

    #[test]
    fn values_are_read_through_the_keys_type() {
        assert_eq!(read_value("session.absolute_timeout", "\"7d\"").unwrap(), read_value("session.absolute_timeout", "\"168h\"").unwrap());
        assert!(read_value("session.store", "\"mongo\"").is_err());
        assert_eq!(read_value("routes[].bearer", "\"jwt\"").unwrap(), Value::from("jwt"));
    }
}
