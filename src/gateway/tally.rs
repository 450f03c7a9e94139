//! The tally of an upstream answer: token usage, response model and finish reasons read from
//! answers, stream and non-stream, in every protocol — small pure functions over the wire shapes,
//! fed one SSE event at a time (nothing buffers a whole stream). Strings are borrowed from the
//! event or body being read; only what is kept (a model name once, finish reasons, answer text
//! for an estimate) is copied.

use std::borrow::Cow;

use serde::Deserialize;

use crate::usage::{AnswerMeta, TokenUsage};

/// Cap of answer text kept for a tokenizer estimate when the upstream reports no usage.
const MAX_TEXT: usize = 1 << 20;

#[derive(Deserialize, Default, Clone, Copy)]
struct Details {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

/// A `usage` object of any protocol: OpenAI (`prompt_tokens` …), Responses (`input_tokens` …
/// with `*_details`) or Anthropic (`input_tokens` … with `cache_*_input_tokens`).
#[derive(Deserialize, Default, Clone, Copy)]
pub struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
}

impl WireUsage {
    fn prompt(&self) -> Option<u64> {
        self.prompt_tokens.or(self.input_tokens)
    }

    fn completion(&self) -> Option<u64> {
        self.completion_tokens.or(self.output_tokens)
    }

    /// Overwrites the fields `newer` reports (Anthropic streams report input first, output last).
    fn merge(&mut self, newer: &WireUsage) {
        macro_rules! take {
            ($($field:ident),*) => { $( if newer.$field.is_some() { self.$field = newer.$field; } )* };
        }
        take!(
            prompt_tokens,
            completion_tokens,
            total_tokens,
            input_tokens,
            output_tokens,
            cache_read_input_tokens,
            cache_creation_input_tokens,
            prompt_tokens_details,
            completion_tokens_details,
            input_tokens_details,
            output_tokens_details
        );
    }

    /// The recorded token fields under one meaning for every protocol; `None` when no prompt or
    /// completion count was reported.
    ///
    /// `prompt` is every input token the provider processed: OpenAI's `prompt_tokens` and the
    /// Responses API's `input_tokens` already include cached tokens, while Anthropic's
    /// `input_tokens` excludes cache reads and writes (reported apart as
    /// `cache_read_input_tokens` and `cache_creation_input_tokens`), so those are added when they
    /// sit beside an `input_tokens`. `completion` is every output token (reasoning included)
    /// and `total` their sum.
    pub fn to_tokens(self) -> Option<TokenUsage> {
        let prompt = self.prompt();
        let completion = self.completion();
        if prompt.is_none() && completion.is_none() && self.total_tokens.is_none() {
            return None;
        }
        let cached = |d: Option<Details>| d.and_then(|d| d.cached_tokens);
        let reasoning = |d: Option<Details>| d.and_then(|d| d.reasoning_tokens);
        // Anthropic's cache counts sit beside `input_tokens`; an OpenAI-shaped usage that also
        // carries them (as some proxies for Claude send) already counts them in `prompt_tokens`.
        let beside_input = self.prompt_tokens.is_none();
        let anthropic_read = self
            .cache_read_input_tokens
            .filter(|_| beside_input)
            .unwrap_or(0);
        let anthropic_write = self
            .cache_creation_input_tokens
            .filter(|_| beside_input)
            .unwrap_or(0);
        let total = match (prompt, completion) {
            (None, None) => self.total_tokens.unwrap_or(0),
            _ => 0,
        };
        let prompt = prompt
            .map(|p| {
                p.saturating_add(anthropic_read)
                    .saturating_add(anthropic_write)
            })
            .unwrap_or(0);
        let completion = completion.unwrap_or(0);
        Some(TokenUsage {
            prompt,
            completion,
            cache_read: self
                .cache_read_input_tokens
                .or(cached(self.prompt_tokens_details))
                .or(cached(self.input_tokens_details))
                .unwrap_or(0),
            cache_creation: self.cache_creation_input_tokens.unwrap_or(0),
            reasoning: reasoning(self.completion_tokens_details)
                .or(reasoning(self.output_tokens_details))
                .unwrap_or(0),
            total: total.max(prompt.saturating_add(completion)),
        })
    }
}

/// A string field of the answer that tolerates any other JSON value in its place (read as
/// absent), so an odd field never costs the usage of the event or body it sits in. Borrowed
/// from the bytes being read unless it has escapes.
#[derive(Default)]
struct Text<'a>(Option<Cow<'a, str>>);

impl Text<'_> {
    fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor)
    }
}

/// Reads any JSON value as a [`Text`]: a string is kept, anything else skipped.
struct TextVisitor;

impl<'de> serde::de::Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
        Ok(Text(Some(Cow::Borrowed(v))))
    }

    fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
        Ok(Text(Some(Cow::Owned(v.to_owned()))))
    }

    fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
        Ok(Text(Some(Cow::Owned(v))))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Text<'de>, E> {
        Ok(Text(None))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Text<'de>, E> {
        Ok(Text(None))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Text<'de>, E> {
        Ok(Text(None))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Text<'de>, E> {
        Ok(Text(None))
    }

    fn visit_unit<E>(self) -> Result<Text<'de>, E> {
        Ok(Text(None))
    }

    fn visit_none<E>(self) -> Result<Text<'de>, E> {
        Ok(Text(None))
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Text<'de>, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Text<'de>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Text(None))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Text<'de>, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Text(None))
    }
}

/// The `delta` of a stream event: a string (the Responses API's text deltas) or an object
/// (OpenAI's chat deltas, Anthropic's content and message deltas); anything else reads as
/// [`Delta::None`].
#[derive(Default)]
enum Delta<'a> {
    #[default]
    None,
    Text(Cow<'a, str>),
    Block {
        text: Text<'a>,
        thinking: Text<'a>,
        partial_json: Text<'a>,
        content: Text<'a>,
        /// Anthropic's `message_delta.delta.stop_reason`.
        stop_reason: Text<'a>,
    },
}

impl<'de: 'a, 'a> Deserialize<'de> for Delta<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DeltaVisitor)
    }
}

/// The members of a delta object the tally reads.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum DeltaField {
    Text,
    Thinking,
    PartialJson,
    Content,
    StopReason,
    #[serde(other)]
    Other,
}

struct DeltaVisitor;

impl<'de> serde::de::Visitor<'de> for DeltaVisitor {
    type Value = Delta<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a delta")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Delta<'de>, E> {
        Ok(Delta::Text(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Delta<'de>, E> {
        Ok(Delta::Text(Cow::Owned(v.to_owned())))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Delta<'de>, A::Error> {
        let (mut text, mut thinking, mut partial_json, mut content, mut stop_reason) =
            Default::default();
        while let Some(field) = map.next_key::<DeltaField>()? {
            let slot = match field {
                DeltaField::Text => &mut text,
                DeltaField::Thinking => &mut thinking,
                DeltaField::PartialJson => &mut partial_json,
                DeltaField::Content => &mut content,
                DeltaField::StopReason => &mut stop_reason,
                DeltaField::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            *slot = map.next_value::<Text<'de>>()?;
        }
        Ok(Delta::Block {
            text,
            thinking,
            partial_json,
            content,
            stop_reason,
        })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Delta<'de>, A::Error> {
        TextVisitor.visit_seq(seq).map(|_| Delta::None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Delta<'de>, E> {
        Ok(Delta::None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Delta<'de>, E> {
        Ok(Delta::None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Delta<'de>, E> {
        Ok(Delta::None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Delta<'de>, E> {
        Ok(Delta::None)
    }

    fn visit_unit<E>(self) -> Result<Delta<'de>, E> {
        Ok(Delta::None)
    }

    fn visit_none<E>(self) -> Result<Delta<'de>, E> {
        Ok(Delta::None)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Delta<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    delta: Delta<'a>,
    #[serde(borrow, default)]
    text: Text<'a>,
    #[serde(borrow, default)]
    finish_reason: Text<'a>,
}

#[derive(Deserialize)]
struct Incomplete<'a> {
    #[serde(borrow, default)]
    reason: Text<'a>,
}

/// Anthropic's `message` (in `message_start`) or the Responses API's `response` object.
#[derive(Deserialize)]
struct Nested<'a> {
    usage: Option<WireUsage>,
    #[serde(borrow, default)]
    model: Text<'a>,
    #[serde(borrow, default)]
    status: Text<'a>,
    #[serde(borrow)]
    incomplete_details: Option<Incomplete<'a>>,
}

/// Statuses of a Responses API answer that say why it ended (not `queued` or `in_progress`).
const FINAL_STATUSES: [&str; 4] = ["completed", "incomplete", "failed", "cancelled"];

/// Notes the finish reason of a Responses API answer: the reason it is incomplete, if it says
/// one, else its status once that is final.
fn note_response_end(
    answer: &mut AnswerMeta,
    status: Option<&str>,
    incomplete: Option<&Incomplete>,
) {
    if let Some(reason) = incomplete.and_then(|i| i.reason.get()) {
        answer.note_finish_reason(reason);
    } else if let Some(status) = status.filter(|s| FINAL_STATUSES.contains(s)) {
        answer.note_finish_reason(status);
    }
}

/// The fields of a stream event the gateway reads; everything else is ignored.
#[derive(Deserialize)]
struct StreamEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Text<'a>,
    usage: Option<WireUsage>,
    #[serde(borrow)]
    choices: Option<Choices<'a>>,
    #[serde(borrow)]
    message: Option<Nested<'a>>,
    #[serde(borrow)]
    response: Option<Nested<'a>>,
    #[serde(borrow, default)]
    delta: Delta<'a>,
    /// The answering model of an OpenAI chunk.
    #[serde(borrow, default)]
    model: Text<'a>,
}

/// The `choices` of a stream event, read without allocating for the usual one (or none).
#[derive(Default)]
struct Choices<'a> {
    first: Option<Choice<'a>>,
    rest: Vec<Choice<'a>>,
}

impl<'a> Choices<'a> {
    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn iter(&self) -> impl Iterator<Item = &Choice<'a>> {
        self.first.iter().chain(&self.rest)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Choices<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ChoicesVisitor;

        impl<'de> serde::de::Visitor<'de> for ChoicesVisitor {
            type Value = Choices<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of choices")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Choices<'de>, A::Error> {
                let mut choices = Choices::default();
                while let Some(choice) = seq.next_element::<Choice<'de>>()? {
                    if choices.first.is_none() {
                        choices.first = Some(choice);
                    } else {
                        choices.rest.push(choice);
                    }
                }
                Ok(choices)
            }
        }

        deserializer.deserialize_seq(ChoicesVisitor)
    }
}

/// What an event means for the client: pass it on, or hold it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the event unchanged.
    Forward,
    /// Drop it: the usage-only chunk the gateway asked for on the client's behalf.
    Hide,
}

/// Usage and answer text gathered from a stream, one event at a time.
///
/// Usage is *final* once it arrives where each protocol puts its closing figures (a top-level
/// `usage`: OpenAI's usage chunk, Anthropic's `message_delta`; or `response.usage` of the
/// Responses API). Anthropic's `message_start.message.usage` is only *provisional*: its input
/// and cache counts are exact, but its output count is a placeholder until `message_delta`.
#[derive(Default)]
pub struct StreamTally {
    reported: Option<WireUsage>,
    final_usage: bool,
    text: String,
    /// Whether the gateway added `stream_options.include_usage` and must hide its chunk.
    pub hide_usage_chunk: bool,
    /// Whether some event could not be parsed.
    pub malformed: bool,
    /// Whether the stream's terminal event arrived: `[DONE]` (chat and text completions),
    /// `message_stop` (Anthropic), or `response.completed`, `response.failed` or
    /// `response.incomplete` (Responses).
    pub ended: bool,
    /// The model and finish reasons the stream reported.
    pub answer: AnswerMeta,
}

impl StreamTally {
    /// A tally; `hide_usage_chunk` when the client did not ask for the usage chunk.
    pub fn new(hide_usage_chunk: bool) -> Self {
        Self {
            hide_usage_chunk,
            ..Self::default()
        }
    }

    fn note_usage(&mut self, usage: &WireUsage, is_final: bool) {
        self.reported
            .get_or_insert_with(WireUsage::default)
            .merge(usage);
        self.final_usage |= is_final;
    }

    fn note_text(&mut self, text: Option<&str>) {
        if let Some(text) = text {
            if self.text.len() + text.len() <= MAX_TEXT {
                self.text.push_str(text);
            }
        }
    }

    /// Reads one event's data (the joined `data:` lines) and says whether to forward it.
    pub fn observe(&mut self, data: &str) -> Verdict {
        let data = data.trim();
        if data == "[DONE]" {
            self.ended = true;
            return Verdict::Forward;
        }
        if data.is_empty() {
            return Verdict::Forward;
        }
        let Ok(event) = serde_json::from_str::<StreamEvent>(data) else {
            self.malformed = true;
            return Verdict::Forward;
        };
        let response_end = matches!(
            event.kind.get(),
            Some("response.completed" | "response.failed" | "response.incomplete")
        );
        if response_end || event.kind.get() == Some("message_stop") {
            self.ended = true;
        }
        if let Some(model) = event.model.get() {
            self.answer.note_model(model);
        }
        if let Some(message) = &event.message {
            if let Some(usage) = &message.usage {
                self.note_usage(usage, false);
            }
            if let Some(model) = message.model.get() {
                self.answer.note_model(model);
            }
        }
        if let Some(response) = &event.response {
            if let Some(usage) = &response.usage {
                self.note_usage(usage, true);
            }
            if let Some(model) = response.model.get() {
                self.answer.note_model(model);
            }
            if response_end {
                note_response_end(
                    &mut self.answer,
                    response.status.get(),
                    response.incomplete_details.as_ref(),
                );
            }
        }
        let mut usage_only_chunk = false;
        if let Some(usage) = &event.usage {
            self.note_usage(usage, true);
            usage_only_chunk = event.choices.as_ref().is_some_and(Choices::is_empty);
        }
        for choice in event.choices.iter().flat_map(Choices::iter) {
            self.note_text(choice.text.get());
            self.note_delta(&choice.delta);
            if let Some(reason) = choice.finish_reason.get() {
                self.answer.note_finish_reason(reason);
            }
        }
        self.note_delta(&event.delta);
        if usage_only_chunk && self.hide_usage_chunk {
            Verdict::Hide
        } else {
            Verdict::Forward
        }
    }

    fn note_delta(&mut self, delta: &Delta) {
        match delta {
            Delta::Text(text) => self.note_text(Some(text)),
            Delta::Block {
                text,
                thinking,
                partial_json,
                content,
                stop_reason,
            } => {
                for part in [text, thinking, partial_json, content] {
                    self.note_text(part.get());
                }
                if let Some(reason) = stop_reason.get() {
                    self.answer.note_finish_reason(reason);
                }
            }
            Delta::None => {}
        }
    }

    /// The final usage the upstream reported, if it did.
    pub fn reported(&self) -> Option<TokenUsage> {
        if !self.final_usage {
            return None;
        }
        self.reported.and_then(WireUsage::to_tokens)
    }

    /// Whatever usage the stream reported so far, final or provisional.
    pub fn provisional(&self) -> Option<TokenUsage> {
        self.reported.and_then(WireUsage::to_tokens)
    }

    /// The answer text seen so far (for an estimate).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Notes the final usage of an answer read some other way (see [`from_fragment`]).
    pub fn report_final(&mut self, usage: &WireUsage) {
        self.note_usage(usage, true);
    }
}

/// The fields of a non-stream answer the gateway reads, in any protocol.
#[derive(Deserialize)]
struct WholeAnswer<'a> {
    usage: Option<WireUsage>,
    #[serde(borrow, default)]
    model: Text<'a>,
    /// Chat and text completions.
    #[serde(borrow)]
    choices: Option<Vec<WholeChoice<'a>>>,
    /// Anthropic.
    #[serde(borrow, default)]
    stop_reason: Text<'a>,
    /// Responses.
    #[serde(borrow, default)]
    status: Text<'a>,
    #[serde(borrow)]
    incomplete_details: Option<Incomplete<'a>>,
    /// An error answer's `error`: `{"message": …}` (OpenAI, Anthropic) or a string.
    #[serde(borrow, default)]
    error: ErrorField<'a>,
}

#[derive(Deserialize)]
struct WholeChoice<'a> {
    #[serde(borrow, default)]
    finish_reason: Text<'a>,
}

/// The `error` of an answer: its `message` when it is an object, itself when a string.
#[derive(Default)]
struct ErrorField<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for ErrorField<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ErrorVisitor;

        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum Field {
            Message,
            #[serde(other)]
            Other,
        }

        impl<'de> serde::de::Visitor<'de> for ErrorVisitor {
            type Value = ErrorField<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an error")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ErrorField<'de>, A::Error> {
                let mut message = Text::default();
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Message => message = map.next_value()?,
                        Field::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(ErrorField(message.0))
            }
        }

        // Any other value is read as a Text (a string is the message itself).
        struct Either;

        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = ErrorField<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an error")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ErrorField<'de>, A::Error> {
                ErrorVisitor.visit_map(map)
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<ErrorField<'de>, E> {
                Ok(ErrorField(Some(Cow::Borrowed(v))))
            }

            fn visit_str<E>(self, v: &str) -> Result<ErrorField<'de>, E> {
                Ok(ErrorField(Some(Cow::Owned(v.to_owned()))))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<ErrorField<'de>, A::Error> {
                TextVisitor.visit_seq(seq).map(|_| ErrorField(None))
            }

            fn visit_bool<E>(self, _: bool) -> Result<ErrorField<'de>, E> {
                Ok(ErrorField(None))
            }

            fn visit_i64<E>(self, _: i64) -> Result<ErrorField<'de>, E> {
                Ok(ErrorField(None))
            }

            fn visit_u64<E>(self, _: u64) -> Result<ErrorField<'de>, E> {
                Ok(ErrorField(None))
            }

            fn visit_f64<E>(self, _: f64) -> Result<ErrorField<'de>, E> {
                Ok(ErrorField(None))
            }

            fn visit_unit<E>(self) -> Result<ErrorField<'de>, E> {
                Ok(ErrorField(None))
            }

            fn visit_none<E>(self) -> Result<ErrorField<'de>, E> {
                Ok(ErrorField(None))
            }

            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<ErrorField<'de>, D::Error> {
                d.deserialize_any(self)
            }
        }

        deserializer.deserialize_any(Either)
    }
}

/// What one read of a non-stream answer body finds.
#[derive(Default)]
pub struct BodyRead {
    /// The usage, if the answer reports one.
    pub usage: Option<TokenUsage>,
    /// The answering model and finish reasons.
    pub answer: AnswerMeta,
    /// Whether the body is JSON at all.
    pub json: bool,
    /// The `message` of an error answer (`error.message`, or `error` when it is a string).
    pub error_message: Option<String>,
}

/// The usage of a non-stream answer body, if it reports one.
pub fn from_body(body: &[u8]) -> Option<TokenUsage> {
    read_body(body).usage
}

/// Everything the gateway reads of a non-stream answer body, in one typed pass that borrows
/// from it. Only a body that does not read as an answer (not JSON, or a field of an unexpected
/// type, such as a string `usage`) is read a second time, to tell whether it is JSON at all.
pub fn read_body(body: &[u8]) -> BodyRead {
    let mut read = BodyRead::default();
    let whole = match serde_json::from_slice::<WholeAnswer>(body) {
        Ok(whole) => whole,
        Err(_) => {
            read.json = serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
            return read;
        }
    };
    read.json = true;
    let answer = &mut read.answer;
    if let Some(model) = whole.model.get() {
        answer.note_model(model);
    }
    for choice in whole.choices.iter().flatten() {
        if let Some(reason) = choice.finish_reason.get() {
            answer.note_finish_reason(reason);
        }
    }
    if let Some(reason) = whole.stop_reason.get() {
        answer.note_finish_reason(reason);
    }
    note_response_end(
        answer,
        whole.status.get(),
        whole.incomplete_details.as_ref(),
    );
    read.usage = whole.usage.and_then(WireUsage::to_tokens);
    read.error_message = whole.error.0.map(Cow::into_owned);
    read
}

/// The usage reported in a fragment of a JSON answer too large to keep whole (its first or last
/// bytes): the last `"usage": {…}` in it that parses as a usage object.
pub fn from_fragment(fragment: &[u8]) -> Option<WireUsage> {
    const KEY: &[u8] = b"\"usage\"";
    let mut end = fragment.len();
    while let Some(at) = fragment[..end].windows(KEY.len()).rposition(|w| w == KEY) {
        end = at;
        let rest = fragment[at + KEY.len()..].trim_ascii_start();
        let Some(rest) = rest.strip_prefix(b":") else {
            continue;
        };
        let rest = rest.trim_ascii_start();
        if !rest.starts_with(b"{") {
            continue;
        }
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<WireUsage>();
        if let Some(Ok(usage)) = values.next() {
            if usage.to_tokens().is_some() {
                return Some(usage);
            }
        }
    }
    None
}

/// Every string under keys that carry text (`content`, `text`, …) anywhere in a JSON document:
/// the prompt of a request or the answer of a response, for a tokenizer estimate.
pub fn texts(value: &serde_json::Value, out: &mut String) {
    each_text(value, &mut |s| {
        if out.len() + s.len() > MAX_TEXT * 4 {
            return;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(s);
    });
}

/// Calls `visit` with every string under keys that carry text, in document order, without
/// copying them (so a caller can look at all of a large prompt's text, or only at its start).
pub fn each_text(value: &serde_json::Value, visit: &mut dyn FnMut(&str)) {
    const TEXT_KEYS: [&str; 10] = [
        "content",
        "text",
        "prompt",
        "input",
        "system",
        "instructions",
        "arguments",
        "thinking",
        "output_text",
        "refusal",
    ];
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                if TEXT_KEYS.contains(&key.as_str()) {
                    strings(child, visit);
                } else {
                    each_text(child, visit);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| each_text(v, visit)),
        _ => {}
    }
}

fn strings(value: &serde_json::Value, visit: &mut dyn FnMut(&str)) {
    match value {
        serde_json::Value::String(s) => visit(s),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, visit)),
        serde_json::Value::Object(_) => each_text(value, visit),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_usage_in_a_fragment_of_a_large_answer() {
        let tail = br#"0.25, 0.5]}], "model": "text-embedding-3-large", "usage": {"prompt_tokens": 7, "total_tokens": 7}}"#;
        let usage = from_fragment(tail).and_then(WireUsage::to_tokens).unwrap();
        assert_eq!((usage.prompt, usage.total), (7, 7));
        let head = br#"{"id":"x","usage" : {"input_tokens":3,"output_tokens":2},"content":[{"text":"usage"#;
        let usage = from_fragment(head).and_then(WireUsage::to_tokens).unwrap();
        assert_eq!((usage.prompt, usage.completion), (3, 2));
        // The word in a string, a cut-off object, nothing at all.
        assert!(from_fragment(br#"{"text": "the \"usage\" of words"}"#).is_none());
        assert!(from_fragment(br#""usage": {"prompt_tokens": 7, "tot"#).is_none());
        assert!(from_fragment(b"").is_none());
    }

    fn tally(events: &[&str], hide: bool) -> (StreamTally, Vec<Verdict>) {
        let mut t = StreamTally::new(hide);
        let verdicts = events.iter().map(|e| t.observe(e)).collect();
        (t, verdicts)
    }

    #[test]
    fn openai_chat_stream_with_hidden_usage_chunk() {
        let events = [
            r#"{"id":"c","choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            r#"{"id":"c","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}"#,
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14,"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":1}}}"#,
            "[DONE]",
        ];
        let (t, verdicts) = tally(&events, true);
        assert!(t.ended);
        assert_eq!(
            verdicts,
            [
                Verdict::Forward,
                Verdict::Forward,
                Verdict::Hide,
                Verdict::Forward
            ]
        );
        assert_eq!(
            t.reported(),
            Some(TokenUsage {
                prompt: 12,
                completion: 2,
                cache_read: 2,
                cache_creation: 0,
                reasoning: 1,
                total: 14
            })
        );
        assert_eq!(t.text(), "Hello");
        let (_, shown) = tally(&events, false);
        assert_eq!(shown[2], Verdict::Forward);
    }

    #[test]
    fn openai_completions_stream_text() {
        let (t, _) = tally(&[r#"{"choices":[{"text":"abc","index":0}]}"#], false);
        assert_eq!(t.text(), "abc");
        assert_eq!(t.reported(), None);
    }

    #[test]
    fn anthropic_stream_merges_start_and_delta() {
        let events = [
            r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":15,"output_tokens":1,"cache_read_input_tokens":3,"cache_creation_input_tokens":1}}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let (t, verdicts) = tally(&events, false);
        assert!(t.ended, "message_stop ends the stream");
        assert!(verdicts.iter().all(|v| *v == Verdict::Forward));
        assert_eq!(
            t.reported(),
            Some(TokenUsage {
                prompt: 19,
                completion: 7,
                cache_read: 3,
                cache_creation: 1,
                reasoning: 0,
                total: 26
            })
        );
        assert_eq!(t.text(), "Hi");
    }

    #[test]
    fn anthropic_message_start_alone_is_provisional() {
        let events = [
            r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":15,"output_tokens":1,"cache_read_input_tokens":3}}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
        ];
        let (t, _) = tally(&events, false);
        assert_eq!(t.reported(), None, "no message_delta yet: not final");
        assert!(!t.ended, "no message_stop");
        let provisional = t.provisional().unwrap();
        assert_eq!((provisional.prompt, provisional.cache_read), (18, 3));
    }

    #[test]
    fn responses_stream_reads_completed() {
        let events = [
            r#"{"type":"response.output_text.delta","delta":"Yo","sequence_number":3}"#,
            r#"{"type":"response.completed","response":{"id":"r","usage":{"input_tokens":20,"output_tokens":5,"total_tokens":25,"input_tokens_details":{"cached_tokens":2},"output_tokens_details":{"reasoning_tokens":1}}}}"#,
        ];
        let (t, _) = tally(&events, false);
        assert!(t.ended);
        let (cut, _) = tally(&events[..1], false);
        assert!(!cut.ended, "no response.completed");
        assert_eq!(
            t.reported(),
            Some(TokenUsage {
                prompt: 20,
                completion: 5,
                cache_read: 2,
                cache_creation: 0,
                reasoning: 1,
                total: 25
            })
        );
        assert_eq!(t.text(), "Yo");
    }

    #[test]
    fn one_meaning_of_prompt_tokens_across_protocols() {
        // A Claude Code turn: Anthropic's input_tokens excludes the cache reads and writes.
        let claude = r#"{"usage":{"input_tokens":4,"output_tokens":12,"cache_read_input_tokens":30000,"cache_creation_input_tokens":5000}}"#;
        let u = from_body(claude.as_bytes()).unwrap();
        assert_eq!(
            (
                u.prompt,
                u.completion,
                u.cache_read,
                u.cache_creation,
                u.total
            ),
            (35_004, 12, 30_000, 5_000, 35_016)
        );
        // OpenAI's prompt_tokens and the Responses API's input_tokens include the cached ones.
        let chat = r#"{"usage":{"prompt_tokens":30004,"completion_tokens":12,"total_tokens":30016,"prompt_tokens_details":{"cached_tokens":30000}}}"#;
        let u = from_body(chat.as_bytes()).unwrap();
        assert_eq!((u.prompt, u.cache_read, u.total), (30_004, 30_000, 30_016));
        let responses = r#"{"usage":{"input_tokens":30004,"output_tokens":12,"total_tokens":30016,"input_tokens_details":{"cached_tokens":30000}}}"#;
        let u = from_body(responses.as_bytes()).unwrap();
        assert_eq!((u.prompt, u.cache_read, u.total), (30_004, 30_000, 30_016));
        // An OpenAI-shaped usage from a proxy for Claude: prompt_tokens already counts the cache.
        let proxied = r#"{"usage":{"prompt_tokens":35004,"completion_tokens":12,"total_tokens":35016,"cache_read_input_tokens":30000,"cache_creation_input_tokens":5000}}"#;
        let u = from_body(proxied.as_bytes()).unwrap();
        assert_eq!(
            (u.prompt, u.cache_read, u.cache_creation, u.total),
            (35_004, 30_000, 5_000, 35_016)
        );
    }

    #[test]
    fn malformed_events_are_noted_and_forwarded() {
        let (t, verdicts) = tally(&["{not json"], true);
        assert!(t.malformed);
        assert_eq!(verdicts, [Verdict::Forward]);
    }

    #[test]
    fn non_stream_bodies() {
        type Case = (&'static str, Option<(u64, u64, u64)>);
        let cases: [Case; 5] = [
            (
                r#"{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
                Some((3, 4, 7)),
            ),
            (
                r#"{"usage":{"prompt_tokens":9,"total_tokens":9}}"#,
                Some((9, 0, 9)),
            ),
            (
                r#"{"usage":{"input_tokens":5,"output_tokens":6}}"#,
                Some((5, 6, 11)),
            ),
            (r#"{"id":"x"}"#, None),
            ("not json", None),
        ];
        for (body, want) in cases {
            let got = from_body(body.as_bytes()).map(|u| (u.prompt, u.completion, u.total));
            assert_eq!(got, want, "{body}");
        }
    }

    /// (model, finish reasons) of an answer, for the tables below.
    fn meta(answer: &AnswerMeta) -> (Option<&str>, Vec<&str>) {
        (
            answer.model.as_deref(),
            answer.finish_reasons.iter().map(String::as_str).collect(),
        )
    }

    #[test]
    fn response_model_and_finish_reasons_of_streams() {
        type Case = (
            &'static str,
            &'static [&'static str],
            Option<&'static str>,
            &'static [&'static str],
        );
        let cases: [Case; 7] = [
            (
                "openai chat, an empty model first (Azure), two choices",
                &[
                    r#"{"id":"c","model":"","choices":[],"prompt_filter_results":[]}"#,
                    r#"{"id":"c","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#,
                    r#"{"id":"c","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{},"finish_reason":"stop"},{"index":1,"delta":{},"finish_reason":"length"}]}"#,
                    r#"{"id":"c","model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
                    "[DONE]",
                ],
                Some("gpt-4o-2024-08-06"),
                &["stop", "length"],
            ),
            (
                "openai text completions",
                &[
                    r#"{"model":"gpt-3.5-turbo-instruct","choices":[{"text":"hi","index":0,"finish_reason":null}]}"#,
                    r#"{"model":"gpt-3.5-turbo-instruct","choices":[{"text":"","index":0,"finish_reason":"length"}]}"#,
                ],
                Some("gpt-3.5-turbo-instruct"),
                &["length"],
            ),
            (
                "anthropic messages",
                &[
                    r#"{"type":"message_start","message":{"id":"m","model":"claude-sonnet-4-5-20250929","stop_reason":null,"usage":{"input_tokens":3,"output_tokens":1}}}"#,
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
                    r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":5}}"#,
                    r#"{"type":"message_stop"}"#,
                ],
                Some("claude-sonnet-4-5-20250929"),
                &["tool_use"],
            ),
            (
                "responses, completed",
                &[
                    r#"{"type":"response.created","response":{"id":"r","model":"gpt-5","status":"in_progress","usage":null}}"#,
                    r#"{"type":"response.output_text.delta","delta":"hi"}"#,
                    r#"{"type":"response.completed","response":{"id":"r","model":"gpt-5","status":"completed","incomplete_details":null,"usage":{"input_tokens":2,"output_tokens":1}}}"#,
                ],
                Some("gpt-5"),
                &["completed"],
            ),
            (
                "responses, incomplete for a reason",
                &[
                    r#"{"type":"response.incomplete","response":{"model":"gpt-5","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"}}}"#,
                ],
                Some("gpt-5"),
                &["max_output_tokens"],
            ),
            (
                "odd types are ignored, the usage still read",
                &[
                    r#"{"model":42,"choices":[{"delta":{"content":"x"},"finish_reason":{"x":[1]}}],"usage":{"prompt_tokens":4,"completion_tokens":2}}"#,
                ],
                None,
                &[],
            ),
            ("nothing reported", &["{}", "[DONE]"], None, &[]),
        ];
        for (name, events, model, reasons) in cases {
            let (t, _) = tally(events, false);
            assert!(!t.malformed, "{name}");
            assert_eq!(meta(&t.answer), (model, reasons.to_vec()), "{name}");
        }
        let (t, _) = tally(&[cases[5].1[0]], false);
        assert_eq!(t.reported().map(|u| u.total), Some(6));
    }

    #[test]
    fn response_model_and_finish_reasons_of_bodies() {
        type Case = (&'static str, Option<&'static str>, &'static [&'static str]);
        let cases: [Case; 7] = [
            (
                r#"{"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
                Some("gpt-4o-mini-2024-07-18"),
                &["stop"],
            ),
            (
                r#"{"type":"message","model":"claude-haiku-4-5","content":[],"stop_reason":"max_tokens","stop_sequence":null}"#,
                Some("claude-haiku-4-5"),
                &["max_tokens"],
            ),
            (
                r#"{"object":"response","model":"gpt-5","status":"completed","incomplete_details":null}"#,
                Some("gpt-5"),
                &["completed"],
            ),
            (
                r#"{"object":"response","model":"gpt-5","status":"incomplete","incomplete_details":{"reason":"content_filter"}}"#,
                Some("gpt-5"),
                &["content_filter"],
            ),
            (
                r#"{"object":"response","model":"gpt-5","status":"queued"}"#,
                Some("gpt-5"),
                &[],
            ),
            (
                r#"{"error":{"message":"boom"},"status":500,"model":null}"#,
                None,
                &[],
            ),
            ("not json", None, &[]),
        ];
        for (body, model, reasons) in cases {
            let answer = read_body(body.as_bytes()).answer;
            assert_eq!(meta(&answer), (model, reasons.to_vec()), "{body}");
        }
    }

    #[test]
    fn response_model_and_finish_reasons_are_bounded() {
        let long = format!(
            r#"{{"model":"{}é","choices":[{}]}}"#,
            "m".repeat(255),
            vec![r#"{"finish_reason":"stop"}"#; 20].join(",")
        );
        let answer = read_body(long.as_bytes()).answer;
        assert_eq!(answer.model.as_deref(), Some("m".repeat(255).as_str()));
        assert_eq!(
            answer.finish_reasons.len(),
            crate::usage::MAX_FINISH_REASONS
        );
        let odd = format!(r#"{{"stop_reason":"a\u0000b{}"}}"#, "r".repeat(100));
        let answer = read_body(odd.as_bytes()).answer;
        assert_eq!(answer.finish_reasons, [format!("ab{}", "r".repeat(62))]);
    }

    #[test]
    fn collects_texts_for_estimates() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":"hello"},{"role":"user","content":[{"type":"text","text":"world"}]}],"system":"sys"}"#,
        )
        .unwrap();
        let mut out = String::new();
        texts(&v, &mut out);
        assert!(out.contains("hello") && out.contains("world") && out.contains("sys"));
        assert!(!out.contains("user"));
    }
}
