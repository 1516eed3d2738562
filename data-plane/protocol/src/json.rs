//! Reading JSON frames and request bodies that must be objects, with the error code decided by
//! the whole input.
//!
//! Two things serde does not do on its own:
//! - A derived struct also deserialises from a JSON array (`[7, "ping"]` as `{"id": 7, "op":
//!   "ping"}`). Frames and bodies are documented as objects, so [`from_object`] reads every
//!   struct, at any depth, through a wrapper that refuses arrays where a struct is expected.
//! - The first error serde meets decides its category: `[[[[` fails as "wrong type" before the
//!   parser notices the input is not JSON at all. The code is chosen by checking the whole input
//!   again (only on the error path): not JSON at all is `invalid_json`, JSON of the wrong shape
//!   (however deeply nested) is `invalid_frame`.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess,
    Unexpected, VariantAccess, Visitor,
};

use crate::code::ErrorCode;

/// Why a frame or body was refused: `invalid_json` or `invalid_frame`, with a precise message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct JsonError {
    /// [`ErrorCode::InvalidJson`] or [`ErrorCode::InvalidFrame`].
    pub code: ErrorCode,
    /// What was wrong, for the client.
    pub message: String,
}

/// Parses `text` as one JSON object of type `T`; `what` names the input in messages (`"a frame"`,
/// `"the request body"`).
pub fn from_object<T: DeserializeOwned>(text: &str, what: &str) -> Result<T, JsonError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = T::deserialize(Strict(&mut de)).and_then(|value| de.end().map(|()| value));
    parsed.map_err(|err| classify(text, &err, what))
}

/// Chooses the code for a failed parse by looking at the whole input.
fn classify(text: &str, err: &serde_json::Error, what: &str) -> JsonError {
    if let Err(syntax) = serde_json::from_str::<IgnoredAny>(text) {
        return JsonError {
            code: ErrorCode::InvalidJson,
            message: format!("{what} is not valid JSON: {syntax}"),
        };
    }
    if !text.trim_start().starts_with('{') {
        return JsonError { code: ErrorCode::InvalidFrame, message: format!("{what} must be a JSON object") };
    }
    JsonError { code: ErrorCode::InvalidFrame, message: err.to_string() }
}

/// A deserializer that hands every visitor a [`Wrap`], so nested values are read strictly too.
struct Strict<D>(D);

/// A visitor that refuses a sequence where a struct (`object: true`) was asked for, and wraps
/// whatever it hands on.
struct Wrap<V> {
    visitor: V,
    object: bool,
}

impl<V> Wrap<V> {
    fn any(visitor: V) -> Self {
        Self { visitor, object: false }
    }
}

/// Sequence, map and enum access that deserialise their elements strictly.
struct Access<A>(A);

/// A seed that deserialises strictly.
struct Seed<S>(S);

macro_rules! forward_deserialize {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            self.0.$method(Wrap::any(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<D> {
    type Error = D::Error;

    forward_deserialize!(
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    );

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_unit_struct(name, Wrap::any(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        // Passes serde_json's private name through untouched: `RawValue` relies on it.
        self.0.deserialize_newtype_struct(name, Wrap::any(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_tuple(len, Wrap::any(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_tuple_struct(name, len, Wrap::any(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_struct(name, fields, Wrap { visitor, object: true })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, Wrap::any(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.visitor.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    forward_visit!(
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64) visit_i128(i128)
        visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64) visit_u128(u128)
        visit_f32(f32) visit_f64(f64) visit_char(char) visit_str(&str) visit_borrowed_str(&'de str)
        visit_string(String) visit_bytes(&[u8]) visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    );

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        self.visitor.visit_some(Strict(deserializer))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        self.visitor.visit_newtype_struct(Strict(deserializer))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        if self.object {
            return Err(de::Error::invalid_type(Unexpected::Seq, &self));
        }
        self.visitor.visit_seq(Access(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_map(Access(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_enum(Access(data))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Access<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Seed(seed))
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.0.next_value_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Access<A> {
    type Error = A::Error;
    type Variant = Access<A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self::Variant), A::Error> {
        self.0.variant_seed(Seed(seed)).map(|(value, variant)| (value, Access(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Access<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        self.0.newtype_variant_seed(Seed(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, Wrap::any(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, Wrap { visitor, object: true })
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Strict(deserializer))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::value::RawValue;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        id: Option<u64>,
        inner: Option<Inner>,
        list: Option<Vec<u32>>,
        raw: Option<Box<RawValue>>,
        value: Option<serde_json::Value>,
    }

    fn parse(text: &str) -> Result<Outer, JsonError> {
        from_object(text, "the body")
    }

    #[test]
    fn objects_are_read_as_usual() {
        let outer =
            parse(r#"{"id":7,"inner":{"a":1},"list":[1,2],"raw":[1, {"b":[]}],"value":[{"x":null}]}"#)
                .unwrap();
        assert_eq!(outer.id, Some(7));
        assert_eq!(outer.inner, Some(Inner { a: 1 }));
        assert_eq!(outer.list, Some(vec![1, 2]));
        // Raw values keep their text exactly, arrays included.
        assert_eq!(outer.raw.unwrap().get(), r#"[1, {"b":[]}]"#);
        assert_eq!(outer.value.unwrap(), serde_json::json!([{"x": null}]));
    }

    #[test]
    fn arrays_are_refused_where_objects_are_required() {
        let top = parse("[7,null,null,null,null]").unwrap_err();
        assert_eq!(top.code, ErrorCode::InvalidFrame);
        assert_eq!(top.message, "the body must be a JSON object");
        let nested = parse(r#"{"inner":[1]}"#).unwrap_err();
        assert_eq!(nested.code, ErrorCode::InvalidFrame);
        assert!(nested.message.contains("invalid type: sequence"), "{}", nested.message);
        for not_object in ["7", "\"x\"", "null", "true", " [] "] {
            assert_eq!(parse(not_object).unwrap_err().code, ErrorCode::InvalidFrame, "{not_object}");
        }
    }

    #[test]
    fn the_whole_input_decides_between_invalid_json_and_invalid_frame() {
        let deep = "[".repeat(60_000);
        for broken in ["[[[[[", deep.as_str(), "{\"id\":1", "{} x", "{\"id\":[}", ""] {
            let err = parse(broken).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidJson, "{broken:.20}: {}", err.message);
            assert!(err.message.starts_with("the body is not valid JSON"), "{}", err.message);
        }
        // Valid JSON of the wrong shape, however deep.
        let deep_valid = format!("{}{}", "[".repeat(1_000), "]".repeat(1_000));
        let deep_value = format!(r#"{{"value":{}{}}}"#, "[".repeat(1_000), "]".repeat(1_000));
        for wrong in [
            r#"{"id":"x"}"#,
            r#"{"other":1}"#,
            "[[[[]]]]",
            r#"{"inner":{"a":1,"b":2}}"#,
            &deep_valid,
            &deep_value,
        ] {
            assert_eq!(parse(wrong).unwrap_err().code, ErrorCode::InvalidFrame, "{wrong}");
        }
    }
}
