//! The client's request as the gateway reads it: one serde pass over the body's bytes that keeps
//! the few members the gateway acts on (`model`, `stream`, `stream_options`, the token limits,
//! `n`, the end user, the reasoning effort and service tier) — strings borrowed from the bytes, not copied — and the figures a budget
//! reservation needs (media parts, tools, messages), without building a tree. The body itself is forwarded
//! as the bytes that came in; the tokenizer estimate reads them again only when it is needed.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::estimate::{FILE_TOKENS, IMAGE_TOKENS};

/// The names a request may give its answer's token limit, in the order they are read.
pub const MAX_TOKENS_FIELDS: [&str; 3] =
    ["max_tokens", "max_completion_tokens", "max_output_tokens"];

/// What the gateway reads of a request body.
#[derive(Debug, Default)]
pub struct RequestView<'a> {
    /// `model`, when it is a string.
    pub model: Option<Cow<'a, str>>,
    /// `stream`, when it is `true`.
    pub stream: bool,
    /// Whether the body has a `stream_options` member (whatever its value).
    pub has_stream_options: bool,
    /// `stream_options` is an object.
    pub stream_options_object: bool,
    /// `stream_options.include_usage`, when it is `true`.
    pub include_usage: bool,
    /// Each of [`MAX_TOKENS_FIELDS`]: `None` when absent, `Some(None)` when not a whole number.
    limits: [Option<Option<u64>>; 3],
    /// `n` and `best_of`, when they are whole numbers.
    n: Option<u64>,
    best_of: Option<u64>,
    /// `messages` and `input`: `Some(None)` when present but not arrays, else their lengths.
    messages: Option<Option<usize>>,
    input: Option<Option<usize>>,
    /// Whether `previous_response_id` and `conversation` are present and not `null`.
    context: [bool; 2],
    /// The length of `tools` when it is an array, and how many of them run at the provider
    /// (their `type` is a string other than `function` or `custom`).
    tools: Option<(usize, u64)>,
    /// The request's image and file parts.
    pub media: Media,
    /// The end user named by `safety_identifier`, `user` (OpenAI) and `metadata.user_id`
    /// (Anthropic), when they are strings.
    users: [Option<Cow<'a, str>>; 3],
    /// The reasoning effort: `reasoning_effort` (Chat Completions), `reasoning.effort`
    /// (Responses), when they are strings.
    efforts: [Option<Cow<'a, str>>; 2],
    /// `service_tier` (OpenAI and Anthropic), when it is a string.
    pub service_tier: Option<Cow<'a, str>>,
}

/// The image and file parts of a request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Media {
    /// Bytes of the parts' strings (inline data, URLs), left out of the byte bound.
    pub inline_bytes: u64,
    /// The parts' fixed bounds.
    pub bound: u64,
}

impl Media {
    fn add(&mut self, other: Media) {
        self.inline_bytes = self.inline_bytes.saturating_add(other.inline_bytes);
        self.bound = self.bound.saturating_add(other.bound);
    }
}

/// Why a body cannot be read as a request.
#[derive(Debug)]
pub enum ParseError {
    /// Not JSON at all (serde_json's message says where).
    Syntax(serde_json::Error),
    /// JSON, but not an object.
    NotObject,
}

impl<'a> RequestView<'a> {
    /// Reads a request body in one pass; nothing of it is copied but an escaped `model`.
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let view = de.deserialize_any(Root).map_err(ParseError::Syntax)?;
        de.end().map_err(ParseError::Syntax)?;
        view.ok_or(ParseError::NotObject)
    }

    /// The answer's token limit: the first of [`MAX_TOKENS_FIELDS`] that is a whole number.
    pub fn max_tokens(&self) -> Option<u64> {
        self.limits.iter().find_map(|l| l.flatten())
    }

    /// Whether any of [`MAX_TOKENS_FIELDS`] is present, whatever its value.
    pub fn has_max_tokens_field(&self) -> bool {
        self.limits.iter().any(Option::is_some)
    }

    /// Answers the request asks for at once (`n`, or `best_of` of legacy completions), each of
    /// which may use its whole `max_tokens`; capped so that a silly value cannot overflow a bound.
    pub fn choices(&self) -> u64 {
        self.n
            .into_iter()
            .chain(self.best_of)
            .max()
            .unwrap_or(1)
            .clamp(1, 1024)
    }

    /// Messages the provider frames: the length of `messages` (or else of `input`), at least 1.
    pub fn message_count(&self) -> u64 {
        match self.messages.or(self.input) {
            Some(Some(n)) => n.max(1) as u64,
            _ => 1,
        }
    }

    /// References to earlier context kept by the provider (`previous_response_id`,
    /// `conversation`) that are not `null`.
    pub fn context_refs(&self) -> u64 {
        self.context.iter().filter(|c| **c).count() as u64
    }

    /// `tools`: their number and how many run at the provider, when it is an array.
    pub fn tools(&self) -> Option<(usize, u64)> {
        self.tools
    }

    /// The reasoning effort the request asks for, raw: `reasoning_effort`, else
    /// `reasoning.effort`.
    pub fn reasoning_effort(&self) -> Option<&str> {
        first_text(&self.efforts)
    }

    /// The end user the request names, raw: `safety_identifier` (OpenAI's successor of `user`),
    /// else `user`, else Anthropic's `metadata.user_id`; blank values are skipped.
    pub fn end_user(&self) -> Option<&str> {
        first_text(&self.users)
    }
}

/// The first of `values` that is present and not blank.
fn first_text<'s>(values: &'s [Option<Cow<'_, str>>]) -> Option<&'s str> {
    values
        .iter()
        .flatten()
        .map(|v| v.as_ref())
        .find(|v| !v.trim().is_empty())
}

/// A JSON scalar of interest at the top level.
#[derive(Debug, Default)]
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Bool(bool),
    Whole(u64),
    Null,
    #[default]
    Other,
}

/// The `type` member of an object.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Type {
    /// None, or not a string.
    #[default]
    None,
    /// `function` or `custom` (a tool the client runs).
    Function,
    /// Any other string.
    Other,
}

/// What one walked value is, as far as the request's reading needs.
#[derive(Debug, Default)]
struct Node<'a> {
    scalar: Scalar<'a>,
    /// Bytes of every string in the value (member names excluded).
    strings: u64,
    /// Of an array: its length and how many of its elements are objects of [`Type::Other`].
    array: Option<(usize, u64)>,
    /// Of an object: its `type`, and its `include_usage` when that is a boolean.
    kind: Type,
    include_usage: Option<bool>,
    is_object: bool,
    /// Of an object walked with [`Walk::member`]: that member, when it is a string.
    member: Option<Cow<'a, str>>,
}

/// Walks any JSON value without keeping it, adding the media parts found in it to `media`.
struct Walk<'m> {
    media: &'m mut Media,
    /// Whether a string value is kept (copied when it has escapes).
    keep_str: bool,
    /// The member of an object whose string is kept: `user_id` of Anthropic's `metadata`,
    /// `effort` of OpenAI's `reasoning`.
    member: Option<&'static str>,
}

impl Walk<'_> {
    /// The node of a string of `len` bytes, its value kept (made by `value`) only if asked.
    fn string<'de>(&self, len: usize, value: impl FnOnce() -> Cow<'de, str>) -> Node<'de> {
        Node {
            scalar: if self.keep_str {
                Scalar::Str(value())
            } else {
                Scalar::Other
            },
            strings: len as u64,
            ..Node::default()
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Node<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

fn media_bound(kind: &str) -> Option<u64> {
    match kind {
        "image_url" | "input_image" | "image" => Some(IMAGE_TOKENS),
        "file" | "input_file" | "document" => Some(FILE_TOKENS),
        _ => None,
    }
}

/// A member name, borrowed from the body unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node<'de>, E> {
        Ok(Node {
            scalar: Scalar::Bool(v),
            ..Node::default()
        })
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node<'de>, E> {
        let scalar = u64::try_from(v).map_or(Scalar::Other, Scalar::Whole);
        Ok(Node {
            scalar,
            ..Node::default()
        })
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node<'de>, E> {
        Ok(Node {
            scalar: Scalar::Whole(v),
            ..Node::default()
        })
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node<'de>, E> {
        Ok(Node::default())
    }

    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node {
            scalar: Scalar::Null,
            ..Node::default()
        })
    }

    fn visit_none<E>(self) -> Result<Node<'de>, E> {
        Ok(Node {
            scalar: Scalar::Null,
            ..Node::default()
        })
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Node<'de>, E> {
        Ok(self.string(v.len(), || Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node<'de>, E> {
        Ok(self.string(v.len(), || Cow::Owned(v.to_owned())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let (mut len, mut typed, mut strings) = (0usize, 0u64, 0u64);
        while let Some(item) = seq.next_element_seed(Walk {
            media: &mut *self.media,
            keep_str: false,
            member: None,
        })? {
            len += 1;
            if item.kind == Type::Other {
                typed += 1;
            }
            strings = strings.saturating_add(item.strings);
        }
        Ok(Node {
            strings,
            array: Some((len, typed)),
            ..Node::default()
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        // The parts below this object are counted as its own unless it is itself a media part,
        // which is known only once its `type` is read (it may come last).
        let mut inner = Media::default();
        let (mut strings, mut kind, mut bound, mut include_usage) = (0u64, Type::None, None, None);
        let mut member = None;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let is_type = key == "type";
            let is_member = self.member == Some(key.as_ref());
            let child = map.next_value_seed(Walk {
                media: &mut inner,
                keep_str: is_type || is_member,
                member: None,
            })?;
            strings = strings.saturating_add(child.strings);
            if is_member {
                if let Scalar::Str(value) = child.scalar {
                    member = Some(value);
                }
            } else if is_type {
                (kind, bound) = match &child.scalar {
                    Scalar::Str(t) if t == "function" || t == "custom" => (Type::Function, None),
                    Scalar::Str(t) => (Type::Other, media_bound(t)),
                    _ => (Type::None, None),
                };
            } else if key == "include_usage" {
                include_usage = match child.scalar {
                    Scalar::Bool(b) => Some(b),
                    _ => None,
                };
            }
        }
        match bound {
            Some(bound) => self.media.add(Media {
                inline_bytes: strings,
                bound,
            }),
            None => self.media.add(inner),
        }
        Ok(Node {
            strings,
            kind,
            include_usage,
            is_object: true,
            member,
            ..Node::default()
        })
    }
}

/// The top level: an object read into a [`RequestView`]; any other value reads as `None`.
struct Root;

impl<'de> Visitor<'de> for Root {
    type Value = Option<RequestView<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut view = RequestView::default();
        let mut inner = Media::default();
        let (mut strings, mut bound) = (0u64, None);
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let keep_str = matches!(
                key.as_ref(),
                "model"
                    | "type"
                    | "safety_identifier"
                    | "user"
                    | "reasoning_effort"
                    | "service_tier"
            );
            let member = match key.as_ref() {
                "metadata" => Some("user_id"),
                "reasoning" => Some("effort"),
                _ => None,
            };
            let node = map.next_value_seed(Walk {
                media: &mut inner,
                keep_str,
                member,
            })?;
            strings = strings.saturating_add(node.strings);
            let whole = match &node.scalar {
                Scalar::Whole(n) => Some(*n),
                _ => None,
            };
            let not_null = !matches!(node.scalar, Scalar::Null);
            let text = |node: Node<'de>| match node.scalar {
                Scalar::Str(text) => Some(text),
                _ => None,
            };
            match key.as_ref() {
                "model" => {
                    view.model = match node.scalar {
                        Scalar::Str(model) => Some(model),
                        _ => None,
                    }
                }
                "stream" => view.stream = matches!(node.scalar, Scalar::Bool(true)),
                "stream_options" => {
                    view.has_stream_options = true;
                    view.stream_options_object = node.is_object;
                    view.include_usage = node.include_usage == Some(true);
                }
                "max_tokens" => view.limits[0] = Some(whole),
                "max_completion_tokens" => view.limits[1] = Some(whole),
                "max_output_tokens" => view.limits[2] = Some(whole),
                "n" => view.n = whole,
                "best_of" => view.best_of = whole,
                "messages" => view.messages = Some(node.array.map(|(len, _)| len)),
                "input" => view.input = Some(node.array.map(|(len, _)| len)),
                "tools" => view.tools = node.array,
                "type" => {
                    bound = match &node.scalar {
                        Scalar::Str(t) => media_bound(t),
                        _ => None,
                    }
                }
                "previous_response_id" => view.context[0] = not_null,
                "conversation" => view.context[1] = not_null,
                "safety_identifier" => view.users[0] = text(node),
                "user" => view.users[1] = text(node),
                "metadata" => view.users[2] = node.member,
                "reasoning_effort" => view.efforts[0] = text(node),
                "reasoning" => view.efforts[1] = node.member,
                "service_tier" => view.service_tier = text(node),
                _ => {}
            }
        }
        // A request that is itself a media part (nothing sends one; counted as such all the same).
        view.media = match bound {
            Some(bound) => Media {
                inline_bytes: strings,
                bound,
            },
            None => inner,
        };
        Ok(Some(view))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_members_the_gateway_acts_on() {
        let body = br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false},
            "max_tokens":"x","max_completion_tokens":12,"n":3,"best_of":2,
            "messages":[{"role":"user","content":"hi"},{"role":"user","content":"again"}]}"#;
        let view = RequestView::parse(body).unwrap();
        assert_eq!(view.model.as_deref(), Some("gpt-4o"));
        assert!(matches!(view.model, Some(Cow::Borrowed(_))), "not copied");
        assert!(view.stream && view.has_stream_options && view.stream_options_object);
        assert!(!view.include_usage);
        assert_eq!(view.max_tokens(), Some(12));
        assert!(view.has_max_tokens_field());
        assert_eq!((view.choices(), view.message_count()), (3, 2));
        let escaped = RequestView::parse(br#"{"model":"gpt\u002d4o","stream":"yes"}"#).unwrap();
        assert_eq!(escaped.model.as_deref(), Some("gpt-4o"));
        assert!(!escaped.stream && !escaped.has_max_tokens_field());
        assert!(RequestView::parse(br#"{"model":7}"#)
            .unwrap()
            .model
            .is_none());
    }

    #[test]
    fn reads_the_end_user_of_either_protocol() {
        let cases: [(&[u8], Option<&str>); 7] = [
            (br#"{"model":"m","user":"u-1"}"#, Some("u-1")),
            (
                br#"{"user":"old","safety_identifier":"new","model":"m"}"#,
                Some("new"),
            ),
            (
                br#"{"metadata":{"session":"x","user_id":"claude-u"},"model":"m"}"#,
                Some("claude-u"),
            ),
            (br#"{"user":" ","metadata":{"user_id":"b"}}"#, Some("b")),
            (br#"{"user":7,"metadata":{"user_id":null}}"#, None),
            // Only the request's own `metadata`, not a `user_id` deeper down.
            (
                br#"{"messages":[{"metadata":{"user_id":"x"},"user_id":"y"}]}"#,
                None,
            ),
            (br#"{"user":"ali"}"#, Some("ali")),
        ];
        for (body, want) in cases {
            let view = RequestView::parse(body).unwrap();
            assert_eq!(view.end_user(), want, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn reads_the_reasoning_effort_and_service_tier() {
        let cases: [(&[u8], Option<&str>, Option<&str>); 6] = [
            (
                br#"{"model":"o3","reasoning_effort":"high","service_tier":"flex"}"#,
                Some("high"),
                Some("flex"),
            ),
            (
                br#"{"reasoning":{"summary":"auto","effort":"low"},"model":"gpt-5"}"#,
                Some("low"),
                None,
            ),
            (
                br#"{"reasoning_effort":"minimal","reasoning":{"effort":"low"}}"#,
                Some("minimal"),
                None,
            ),
            // Anthropic's tier; an effort that is not a string is none.
            (
                br#"{"model":"claude","service_tier":"standard_only","reasoning":{"effort":3}}"#,
                None,
                Some("standard_only"),
            ),
            // Only the request's own `reasoning`, not an `effort` deeper down.
            (
                br#"{"messages":[{"reasoning":{"effort":"x"},"effort":"y","service_tier":"z"}]}"#,
                None,
                None,
            ),
            (br#"{"service_tier":null,"reasoning":null}"#, None, None),
        ];
        for (body, effort, tier) in cases {
            let view = RequestView::parse(body).unwrap();
            let text = String::from_utf8_lossy(body);
            assert_eq!(view.reasoning_effort(), effort, "{text}");
            assert_eq!(view.service_tier.as_deref(), tier, "{text}");
        }
    }

    #[test]
    fn tells_bad_json_from_json_that_is_not_an_object() {
        assert!(matches!(
            RequestView::parse(b"{\"model\":"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            RequestView::parse(b"{} x"),
            Err(ParseError::Syntax(_))
        ));
        for body in [&b"[1,{\"a\":2}]"[..], b"\"text\"", b"null", b"3"] {
            assert!(matches!(
                RequestView::parse(body),
                Err(ParseError::NotObject)
            ));
        }
    }

    /// The same figures as a walk over a `serde_json::Value` of the body (the former reading).
    #[test]
    fn counts_media_tools_and_context_like_a_tree_walk() {
        let body = serde_json::json!({
            "input": [{"role": "user", "content": [
                {"text": "x", "type": "input_text"},
                {"image_url": {"url": "data:image/png;base64,AAAA"}, "type": "image_url"},
                {"type": "input_file", "file_id": "file-1", "nested": [{"type": "image"}]},
            ]}],
            "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}, {"name": "x"}],
            "previous_response_id": "resp_1",
            "conversation": null,
        });
        let bytes = serde_json::to_vec(&body).unwrap();
        let view = RequestView::parse(&bytes).unwrap();
        let image = "data:image/png;base64,AAAA".len() + "image_url".len();
        let file = "input_file".len() + "file-1".len() + "image".len();
        assert_eq!(
            view.media,
            Media {
                inline_bytes: (image + file) as u64,
                bound: IMAGE_TOKENS + FILE_TOKENS
            }
        );
        assert_eq!(view.tools(), Some((3, 1)));
        assert_eq!(view.context_refs(), 1);
        assert_eq!(view.message_count(), 1);
    }
}
