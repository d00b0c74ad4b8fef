//! One canonical path: the path the route table matches is exactly the path the upstream
//! receives, and it has one spelling only.
//!
//! The attack this closes is a *parser differential*: the gateway matches `/public/../admin`,
//! `//admin`, `/%61dmin` or `/admin;x/` against an `allow` route, while a lenient upstream
//! (Tomcat, Spring, Go's `path.Clean`, WSGI) reads `/admin`. Checking a list of bad spellings
//! would always miss one; instead every path is rewritten to the single form every reader
//! agrees on, or refused when no such form exists:
//!
//! - decoded: `%XX` of an unreserved character (`ALPHA DIGIT - . _ ~`, RFC 3986 §2.3), since
//!   `%61` and `a` are the same character to every reader;
//! - removed: dot segments (`.` and `..`, RFC 3986 §5.2.4) and repeated slashes;
//! - spelled one way: other escapes keep their escape with upper-case hex (`%c3%a9` →
//!   `%C3%A9`), and characters that have no business raw in a path (non-ASCII, `"`, `[`, `|`,
//!   …) are percent-encoded, so `/é` and `/%C3%A9` are one path;
//! - refused (400): what stays ambiguous, because readers disagree on it. See [`PathRefusal`].
//!
//! The query string is carried over byte for byte; it is never part of the path (the `http`
//! crate splits it off at the first `?` before we see the path).
//!
//! Cost: a path that is already canonical (every browser-made path, nearly always) is scanned
//! once and not copied: [`canonicalize_path`] returns it borrowed, [`canonicalize_uri`] returns
//! `None` and the request keeps its URI. A copy is made only from the first byte that changes.

use std::borrow::Cow;

use http::{
    Uri,
    uri::{Parts, PathAndQuery},
};
use portcullis::config::{Config, PathParameters};

/// How paths are canonicalized.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) path_parameters: PathParameters,
}

impl Settings {
    pub(crate) fn new(config: &Config) -> Self {
        Self { path_parameters: config.server.path_parameters }
    }
}

/// Why a path was refused; the text is shown to the client (it never echoes the path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathRefusal {
    /// `*` (`OPTIONS *`) or an authority (`CONNECT host:443`): the gateway serves paths only.
    #[error("The request path was refused: the request target is not an absolute path.")]
    NotAPath,
    /// `%` not followed by two hex digits: readers disagree on what it means.
    #[error("The request path was refused: a % sign does not start a valid percent-escape (%XX).")]
    InvalidEscape,
    /// NUL, CR, LF, DEL…, raw or encoded: they truncate paths in C code and split headers.
    #[error("The request path was refused: it contains a control character (raw or encoded, such as %00 or %0A).")]
    ControlCharacter,
    /// Windows servers, IIS, and Tomcat or Spring in some settings read `\` as `/`.
    #[error("The request path was refused: it contains a backslash, which some servers read as a slash.")]
    Backslash,
    /// `%2F`, `%5C`: a separator to readers that decode before splitting (Envoy's
    /// `UNESCAPE_AND_FORWARD`, Tomcat's `ALLOW_ENCODED_SLASH`, most WSGI servers), a plain
    /// character to the others. No single form means the same to both.
    #[error("The request path was refused: it contains an encoded slash or backslash (%2F or %5C).")]
    EncodedSlash,
    /// `%3F`, `%23`: they end the path for a reader that decodes before it splits off the
    /// query or fragment (a proxy that re-serializes the decoded path).
    #[error("The request path was refused: it contains an encoded ? or # (%3F or %23).")]
    EncodedDelimiter,
    /// `%25` followed by two hex digits: the path changes meaning under a second decoding
    /// (`%252e%252e` → `%2e%2e` → `..`), which some stacks apply.
    #[error("The request path was refused: it is percent-encoded twice (%25 followed by an escape).")]
    DoubleEncoded,
    /// `%2e%2e`, `.%2E`, `%2e`: a dot segment only after decoding. RFC 3986 readers keep it as a
    /// name, decoding readers climb: ambiguous.
    #[error("The request path was refused: it contains a dot segment that is percent-encoded.")]
    EncodedDotSegment,
    /// `/..` or `/a/../..`: there is nothing above the root. RFC 3986 clamps, some servers
    /// answer 400, file servers have been known to climb; a browser never sends it.
    #[error("The request path was refused: it climbs above the root with '..'.")]
    AboveRoot,
    /// `;` (raw or `%3B`) with `server.path_parameters = "refuse"`: Tomcat and Spring strip
    /// `;…` from each segment before matching, so `/admin;x/` is `/admin/` to them.
    #[error("The request path was refused: it contains a ';' path parameter (see server.path_parameters).")]
    PathParameter,
    /// `..;x` or `.;x` (with path parameters passed): a dot segment to every reader that strips
    /// parameters (Tomcat's `/..;/` traversal).
    #[error("The request path was refused: it contains a dot segment with a ';' parameter.")]
    DotSegmentParameter,
    /// Percent-escapes that decode to invalid UTF-8, notably overlong forms such as `%C0%AE`
    /// (a `.` to old decoders, CVE-2008-2938).
    #[error("The request path was refused: its percent-escapes do not decode to UTF-8.")]
    InvalidUtf8,
    /// The canonical form would exceed what a URI may hold (percent-encoding grows a path).
    #[error("The request path was refused: it is too long.")]
    TooLong,
}

/// The canonical form of `uri` when it differs (`Some`), `None` when `uri` is canonical already.
///
/// Scheme and authority (absolute-form targets, HTTP/2 pseudo-headers) are kept as they came:
/// routing uses the path only, and the proxy builds the upstream URI from the route's upstream.
/// The query is kept byte for byte.
pub(crate) fn canonicalize_uri(settings: &Settings, uri: &Uri) -> Result<Option<Uri>, PathRefusal> {
    let path = uri.path();
    let Cow::Owned(canonical) = canonicalize_path(path, settings.path_parameters)? else {
        return Ok(None);
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{canonical}?{query}"),
        None => canonical,
    };
    // Only bytes valid in a path are written, so the one failure left is the length limit.
    let path_and_query = PathAndQuery::try_from(path_and_query).map_err(|_| PathRefusal::TooLong)?;
    let mut parts = Parts::default();
    parts.scheme = uri.scheme().cloned();
    parts.authority = uri.authority().cloned();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).map(Some).map_err(|_| PathRefusal::TooLong)
}

/// The canonical form of `path` (borrowed when `path` is canonical already), or why it has none.
pub(crate) fn canonicalize_path(path: &str, parameters: PathParameters) -> Result<Cow<'_, str>, PathRefusal> {
    let input = path.as_bytes();
    if input.first() != Some(&b'/') {
        return Err(PathRefusal::NotAPath);
    }
    let refuse_parameters = parameters == PathParameters::Refuse;
    if is_plainly_canonical(input, refuse_parameters) {
        return Ok(Cow::Borrowed(path));
    }
    full_pass(path, refuse_parameters)
}

/// Segment by segment: decodes, encodes, removes dot segments and merges slashes, copying
/// only from the first byte that changes.
fn full_pass(path: &str, refuse_parameters: bool) -> Result<Cow<'_, str>, PathRefusal> {
    let input = path.as_bytes();
    let mut out = Output::new(input);
    let mut utf8 = Utf8::default();
    let mut pos = 1; // past the leading '/'
    loop {
        // One segment: input[pos..end], preceded in `input` by a '/' at pos - 1.
        let end = input[pos..].iter().position(|&b| b == b'/').map_or(input.len(), |i| pos + i);
        let last = end == input.len();
        let slash_at = out.len();
        if utf8.pending() {
            // A multi-byte character split by a '/' (`%C3/%A9`).
            return Err(PathRefusal::InvalidUtf8);
        }
        if pos == end && !last {
            // An empty segment that is not the trailing one: a repeated slash, merged.
            out.skip();
            pos = end + 1;
            continue;
        }
        out.keep(pos - 1, 1); // the '/' before the segment
        let content_at = out.len();
        let segment = Segment::scan(input, pos, end, refuse_parameters, &mut out, &mut utf8)?;
        match segment.dot {
            Dot::None => {}
            Dot::Encoded => return Err(PathRefusal::EncodedDotSegment),
            Dot::WithParameter => return Err(PathRefusal::DotSegmentParameter),
            Dot::Current => {
                // `/a/./b` → `/a/b`; a final `/a/.` → `/a/` (RFC 3986 §5.2.4 keeps the slash).
                out.truncate(if last { content_at } else { slash_at });
            }
            Dot::Parent => {
                if slash_at == 0 {
                    return Err(PathRefusal::AboveRoot);
                }
                out.truncate(slash_at);
                let parent = out.as_bytes().iter().rposition(|&b| b == b'/').expect("a non-empty output starts with '/'");
                out.truncate(parent);
                if last {
                    out.push(b"/");
                }
            }
        }
        if last {
            break;
        }
        pos = end + 1;
    }
    if !utf8.is_complete() {
        return Err(PathRefusal::InvalidUtf8);
    }
    Ok(out.finish(path))
}

/// The common case in one tight loop: only characters that are canonical as they stand (no
/// `%`, nothing to encode), no `//`, no `.` or `..` segment. Anything else takes the full pass,
/// which still returns the path borrowed when it turns out canonical (`%C3%A9`, say).
fn is_plainly_canonical(input: &[u8], refuse_parameters: bool) -> bool {
    let mut previous = b'/'; // input[0], checked by the caller
    for (i, &b) in input.iter().enumerate().skip(1) {
        match CLASS[b as usize] {
            Class::Unreserved if b != b'.' => {}
            Class::Raw => {}
            Class::Parameter if !refuse_parameters => {}
            Class::Slash if previous != b'/' => {}
            Class::Unreserved if previous == b'/' => {
                // A segment starting with '.': fine unless it is `.` or `..` (or `..;x`).
                let dots = input[i..].iter().take_while(|&&c| c == b'.').count();
                if dots <= 2 && matches!(input.get(i + dots), None | Some(b'/' | b';')) {
                    return false;
                }
            }
            Class::Unreserved => {} // a '.' inside a segment
            _ => return false,
        }
        previous = b;
    }
    true
}

/// What a segment is, as far as dot-segment removal cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dot {
    None,
    /// Exactly `.`.
    Current,
    /// Exactly `..`.
    Parent,
    /// `.` or `..` only once decoded (`%2e`, `.%2E`).
    Encoded,
    /// `.` or `..` before a `;` parameter (`..;x`), path parameters passed.
    WithParameter,
}

struct Segment {
    dot: Dot,
}

impl Segment {
    /// Writes the canonical form of `input[start..end]` (one segment, no '/') to `out`.
    fn scan(
        input: &[u8],
        start: usize,
        end: usize,
        refuse_parameters: bool,
        out: &mut Output<'_>,
        utf8: &mut Utf8,
    ) -> Result<Self, PathRefusal> {
        // Dots (raw or decoded) at the start of the segment, whether any was encoded, and
        // whether the segment is nothing but them (up to a ';' when parameters pass).
        let mut dots = 0usize;
        let mut encoded_dot = false;
        let mut only_dots = true;
        let mut parameter = false;
        let mut i = start;
        while i < end {
            let (decoded, width) = decode_at(input, i, end)?;
            if decoded >= 0x80 || utf8.pending() {
                utf8.feed(decoded)?;
            }
            if only_dots && !parameter {
                if decoded == b'.' {
                    dots += 1;
                    encoded_dot |= width == 3;
                } else if decoded == b';' && width == 1 {
                    parameter = true; // only reachable with parameters passed
                } else {
                    only_dots = false;
                }
            }
            match CLASS[decoded as usize] {
                // Sub-delimiters, `:` and `@` are decoded too: Go's mux, Tomcat, Spring and WSGI
                // all decode them, so `/items%3Apurge` must be matched as `/items:purge`.
                Class::Unreserved | Class::Raw => out.keep_or_push(i, width, &[decoded]),
                Class::Parameter if refuse_parameters => return Err(PathRefusal::PathParameter),
                Class::Parameter if width == 1 => out.keep(i, 1),
                Class::Parameter | Class::Encode => {
                    // `%25` then two characters that are hex once decoded: a second decoding
                    // would make them an escape.
                    if decoded == b'%' && is_escape_after_decoding(input, i + width, end) {
                        return Err(PathRefusal::DoubleEncoded);
                    }
                    out.keep_or_push(i, width, &encoded(decoded));
                }
                Class::Control => return Err(PathRefusal::ControlCharacter),
                Class::Backslash if width == 1 => return Err(PathRefusal::Backslash),
                Class::Backslash | Class::Slash => return Err(PathRefusal::EncodedSlash),
                Class::Delimiter => return Err(PathRefusal::EncodedDelimiter),
            }
            i += width;
        }
        let dot = match dots {
            1 | 2 if only_dots && parameter => Dot::WithParameter,
            1 | 2 if only_dots && encoded_dot => Dot::Encoded,
            1 if only_dots => Dot::Current,
            2 if only_dots => Dot::Parent,
            _ => Dot::None,
        };
        Ok(Self { dot })
    }
}

/// The byte at `input[at]` once decoded, and how many input bytes it took (1, or 3 for `%XX`).
fn decode_at(input: &[u8], at: usize, end: usize) -> Result<(u8, usize), PathRefusal> {
    if input[at] != b'%' {
        return Ok((input[at], 1));
    }
    match (input.get(at + 1).copied().and_then(hex), input.get(at + 2).copied().and_then(hex)) {
        (Some(high), Some(low)) if at + 2 < end => Ok(((high << 4) | low, 3)),
        _ => Err(PathRefusal::InvalidEscape),
    }
}

/// Whether `input[at..end]` starts with two characters that are hex digits once decoded.
fn is_escape_after_decoding(input: &[u8], at: usize, end: usize) -> bool {
    let Some((first, width)) = (at < end).then(|| decode_at(input, at, end).ok()).flatten() else { return false };
    let second = (at + width < end).then(|| decode_at(input, at + width, end).ok()).flatten();
    hex(first).is_some() && second.is_some_and(|(b, _)| hex(b).is_some())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn encoded(b: u8) -> [u8; 3] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    [b'%', HEX[(b >> 4) as usize], HEX[(b & 0xF) as usize]]
}

/// What a (decoded) byte is in a canonical path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// `ALPHA DIGIT - . _ ~`: always raw (decoded when encoded).
    Unreserved,
    /// Sub-delimiters but `;`, and `:` `@`: allowed raw in a segment, and decoded when encoded.
    /// RFC 3986 §2.2 says an encoded reserved character differs from the raw one, but the
    /// upstreams behind a gateway decode them alike, so one spelling must be chosen: the raw one.
    Raw,
    /// `;`: refused, or passed as it came (`server.path_parameters`).
    Parameter,
    /// Everything else printable, non-ASCII and `%`: always percent-encoded.
    Encode,
    /// C0 controls and DEL.
    Control,
    /// `\`.
    Backslash,
    /// `/` (only ever seen encoded: a raw one separates segments).
    Slash,
    /// `?` and `#` (only ever seen encoded: raw, they end the path before we see it).
    Delimiter,
}

const CLASS: [Class; 256] = {
    let mut table = [Class::Encode; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => Class::Unreserved,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@' => Class::Raw,
            b';' => Class::Parameter,
            0x00..=0x1F | 0x7F => Class::Control,
            b'\\' => Class::Backslash,
            b'/' => Class::Slash,
            b'?' | b'#' => Class::Delimiter,
            _ => Class::Encode,
        };
        b += 1;
    }
    table
};

impl Output<'_> {
    /// Emits the `width` input bytes at `at` when they are already `canonical`, else `canonical`.
    fn keep_or_push(&mut self, at: usize, width: usize, canonical: &[u8]) {
        let same = width == canonical.len() && self.input[at..at + width].iter().zip(canonical).all(|(a, b)| a == b);
        if same { self.keep(at, width) } else { self.push(canonical) }
    }
}

/// The output path, borrowed from the input for as long as it equals a prefix of it.
struct Output<'a> {
    input: &'a [u8],
    /// `None`: the output is `input[..borrowed]`. `Some`: the output diverged.
    owned: Option<Vec<u8>>,
    borrowed: usize,
}

impl<'a> Output<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self { input, owned: None, borrowed: 0 }
    }

    fn len(&self) -> usize {
        self.owned.as_ref().map_or(self.borrowed, Vec::len)
    }

    fn as_bytes(&self) -> &[u8] {
        self.owned.as_deref().unwrap_or(&self.input[..self.borrowed])
    }

    /// Emits `input[at..at + width]` as it is.
    fn keep(&mut self, at: usize, width: usize) {
        match &mut self.owned {
            None if self.borrowed == at => self.borrowed += width,
            None => {
                let mut owned = self.diverge();
                owned.extend_from_slice(&self.input[at..at + width]);
                self.owned = Some(owned);
            }
            Some(owned) => owned.extend_from_slice(&self.input[at..at + width]),
        }
    }

    /// Drops the input byte(s) at the cursor: the output no longer follows the input.
    fn skip(&mut self) {
        if self.owned.is_none() {
            self.owned = Some(self.diverge());
        }
    }

    /// Emits `bytes`, which differ from the input at the cursor.
    fn push(&mut self, bytes: &[u8]) {
        self.skip();
        self.owned.as_mut().expect("just set").extend_from_slice(bytes);
    }

    fn truncate(&mut self, len: usize) {
        match &mut self.owned {
            Some(owned) => owned.truncate(len),
            None => {
                self.borrowed = len;
                self.owned = Some(self.diverge());
            }
        }
    }

    /// A copy of the output so far, to continue from once it no longer follows the input.
    fn diverge(&self) -> Vec<u8> {
        let mut owned = Vec::with_capacity(self.input.len() + 16);
        owned.extend_from_slice(&self.input[..self.borrowed]);
        owned
    }

    fn finish(self, path: &'a str) -> Cow<'a, str> {
        match self.owned {
            None => {
                debug_assert_eq!(self.borrowed, path.len());
                Cow::Borrowed(path)
            }
            // Only ASCII is ever written (non-ASCII is percent-encoded), so this cannot fail.
            Some(owned) => Cow::Owned(String::from_utf8(owned).expect("canonical paths are ASCII")),
        }
    }
}

/// Incremental UTF-8 check of the decoded path (RFC 3629: no overlong forms, no surrogates,
/// nothing above U+10FFFF), fed only with bytes ≥ 0x80 and with what follows them.
#[derive(Debug, Default)]
struct Utf8 {
    /// Continuation bytes still expected.
    needed: u8,
    /// Range allowed for the next continuation byte.
    low: u8,
    high: u8,
}

impl Utf8 {
    fn pending(&self) -> bool {
        self.needed > 0
    }

    fn is_complete(&self) -> bool {
        self.needed == 0
    }

    fn feed(&mut self, b: u8) -> Result<(), PathRefusal> {
        if self.needed > 0 {
            if !(self.low..=self.high).contains(&b) {
                return Err(PathRefusal::InvalidUtf8);
            }
            self.needed -= 1;
            (self.low, self.high) = (0x80, 0xBF);
            return Ok(());
        }
        (self.needed, self.low, self.high) = match b {
            0x00..=0x7F => (0, 0x80, 0xBF),
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            0xED => (2, 0x80, 0x9F),
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            _ => return Err(PathRefusal::InvalidUtf8),
        };
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use PathRefusal::*;

    fn canon(path: &str) -> Result<String, PathRefusal> {
        canonicalize_path(path, PathParameters::Refuse).map(Cow::into_owned)
    }

    fn canon_pass(path: &str) -> Result<String, PathRefusal> {
        canonicalize_path(path, PathParameters::Pass).map(Cow::into_owned)
    }

    #[test]
    fn rewrites_and_refusals() {
        let ok = |s: &str| Ok::<String, PathRefusal>(s.to_string());
        let cases: &[(&str, Result<String, PathRefusal>)] = &[
            // Already canonical.
            ("/", ok("/")),
            ("/app/x", ok("/app/x")),
            ("/app/x/", ok("/app/x/")),
            ("/a-b_c.d~e/!$&'()*+,=:@", ok("/a-b_c.d~e/!$&'()*+,=:@")),
            ("/%C3%A9/%20/%3A/%40/%25", ok("/%C3%A9/%20/:/@/%25")),
            ("/.hidden/...", ok("/.hidden/...")),
            // Repeated slashes merged.
            ("//admin", ok("/admin")),
            ("///a//b///", ok("/a/b/")),
            ("//", ok("/")),
            // Dot segments removed (RFC 3986 §5.2.4).
            ("/./admin", ok("/admin")),
            ("/public/../admin", ok("/admin")),
            ("/a/b/../../c", ok("/c")),
            ("/a/.", ok("/a/")),
            ("/a/..", ok("/")),
            ("/a/./", ok("/a/")),
            ("/.", ok("/")),
            ("/a//..//b", ok("/b")),
            // Unreserved escapes decoded, others upper-cased.
            ("/%61dmin", ok("/admin")),
            ("/admin/%7euser", ok("/admin/~user")),
            ("/%41%5a%30%2d%2E%5f%7E", ok("/AZ0-._~")),
            ("/%2ehidden", ok("/.hidden")),
            ("/%2e%2e%2e", ok("/...")),
            ("/%c3%a9", ok("/%C3%A9")),
            ("/%3a%40%21", ok("/:@!")),
            ("/v1/items%3Apurge", ok("/v1/items:purge")),
            ("/%24%26%27%28%29%2A%2B%2C%3D", ok("/$&'()*+,=")),
            ("/%20", ok("/%20")),
            // Characters that must not be raw are encoded: one spelling for `é` and `%C3%A9`.
            ("/é", ok("/%C3%A9")),
            ("/a\"b{c}|d[e]^f", ok("/a%22b%7Bc%7D%7Cd%5Be%5D%5Ef")),
            ("/a b<c>`", ok("/a%20b%3Cc%3E%60")),
            ("/%25zz/100%25", ok("/%25zz/100%25")),
            // Refused.
            ("*", Err(NotAPath)),
            ("", Err(NotAPath)),
            ("admin", Err(NotAPath)),
            ("/%2e%2e/admin", Err(EncodedDotSegment)),
            ("/x/%2E./admin", Err(EncodedDotSegment)),
            ("/x/.%2e/admin", Err(EncodedDotSegment)),
            ("/%2e/admin", Err(EncodedDotSegment)),
            ("/admin%2fx", Err(EncodedSlash)),
            ("/admin%2Fx", Err(EncodedSlash)),
            ("/..%2fadmin", Err(EncodedSlash)),
            ("/admin%5cx", Err(EncodedSlash)),
            ("/\\admin", Err(Backslash)),
            ("/admin\\x", Err(Backslash)),
            ("/admin%3Fx", Err(EncodedDelimiter)),
            ("/admin%23x", Err(EncodedDelimiter)),
            ("/admin;x/", Err(PathParameter)),
            ("/admin%3bx", Err(PathParameter)),
            ("/..;/admin", Err(PathParameter)),
            ("/%00", Err(ControlCharacter)),
            ("/a%0d%0aX:1", Err(ControlCharacter)),
            ("/a%7F", Err(ControlCharacter)),
            ("/a%1b", Err(ControlCharacter)),
            ("/a\u{0}b", Err(ControlCharacter)),
            ("/a\tb", Err(ControlCharacter)),
            ("/a%", Err(InvalidEscape)),
            ("/a%2", Err(InvalidEscape)),
            ("/a%2/b", Err(InvalidEscape)),
            ("/a%zz", Err(InvalidEscape)),
            ("/a%%41", Err(InvalidEscape)),
            ("/%252e%252e/admin", Err(DoubleEncoded)),
            ("/a%252F", Err(DoubleEncoded)),
            ("/a%25%32%65", Err(DoubleEncoded)),
            ("/..", Err(AboveRoot)),
            ("/../admin", Err(AboveRoot)),
            ("/a/../..", Err(AboveRoot)),
            ("/./..", Err(AboveRoot)),
            ("/%C0%AE%C0%AE/admin", Err(InvalidUtf8)),
            ("/%e0%80%af", Err(InvalidUtf8)),
            ("/%ED%A0%80", Err(InvalidUtf8)),
            ("/%F4%90%80%80", Err(InvalidUtf8)),
            ("/%C3", Err(InvalidUtf8)),
            ("/%C3/%A9", Err(InvalidUtf8)),
            ("/%C3a", Err(InvalidUtf8)),
            ("/%FF", Err(InvalidUtf8)),
        ];
        for (path, expected) in cases {
            assert_eq!(&canon(path), expected, "{path:?}");
        }
    }

    #[test]
    fn path_parameters_passed_unchanged_when_configured() {
        let cases: &[(&str, Result<&str, PathRefusal>)] = &[
            ("/a;jsessionid=1/b", Ok("/a;jsessionid=1/b")),
            ("/a;x/../b", Ok("/b")),
            ("/a%3bx", Ok("/a%3Bx")),
            ("/a%3Bx", Ok("/a%3Bx")),
            ("/;x", Ok("/;x")),
            // Tomcat's `/..;/` traversal: a dot segment to every reader that strips parameters.
            ("/..;/admin", Err(DotSegmentParameter)),
            ("/x/.;x/admin", Err(DotSegmentParameter)),
            ("/x/%2e%2e;/admin", Err(DotSegmentParameter)),
        ];
        for (path, expected) in cases {
            assert_eq!(canon_pass(path).as_deref().map_err(|e| *e), *expected, "{path:?}");
        }
    }

    /// The hot path: a canonical path comes back borrowed (no copy), and its URI is kept.
    #[test]
    fn canonical_paths_are_not_copied() {
        let settings = Settings { path_parameters: PathParameters::Refuse };
        for path in ["/", "/app", "/api/v1/users/42/orders?page=2&sort=date", "/static/app.3f9a1c.js", "/%C3%A9t%C3%A9/"] {
            let (just_path, _) = path.split_once('?').unwrap_or((path, ""));
            assert!(matches!(canonicalize_path(just_path, PathParameters::Refuse), Ok(Cow::Borrowed(_))), "{path}");
            assert_eq!(canonicalize_uri(&settings, &path.parse().unwrap()), Ok(None), "{path}");
        }
    }

    #[test]
    fn uri_keeps_query_scheme_and_authority() {
        let settings = Settings { path_parameters: PathParameters::Refuse };
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        let cases = [
            ("/a/../b?x=/../admin&y=%2F", "/b?x=/../admin&y=%2F"),
            ("//admin?", "/admin?"),
            ("/%61?%61", "/a?%61"),
            ("http://evil.example/public/../admin?q", "http://evil.example/admin?q"),
            ("http://h:8080//x", "http://h:8080/x"),
        ];
        for (raw, expected) in cases {
            assert_eq!(canonicalize_uri(&settings, &uri(raw)).unwrap().unwrap(), uri(expected), "{raw}");
        }
        // Absolute-form without a path is `/`: nothing to rewrite.
        assert_eq!(canonicalize_uri(&settings, &uri("http://h")), Ok(None));
        assert_eq!(canonicalize_uri(&settings, &uri("*")), Err(NotAPath));
        assert_eq!(canonicalize_uri(&settings, &uri("h:443")), Err(NotAPath));
    }

    #[test]
    fn growth_past_the_uri_limit_is_refused_not_a_panic() {
        let settings = Settings { path_parameters: PathParameters::Refuse };
        // 30,000 × "é" is 60,000 bytes raw (a valid URI) and 180,000 once percent-encoded.
        let uri: Uri = format!("/{}", "é".repeat(30_000)).parse().unwrap();
        assert_eq!(canonicalize_uri(&settings, &uri), Err(TooLong));
    }

    /// Paths built from the segments and pieces attacks are made of: whole hostile segments
    /// (so that `/%2e%2e/admin` comes up often) and segments glued from small pieces.
    pub(crate) fn hostile_path() -> impl Strategy<Value = String> {
        let whole = prop::sample::select(vec![
            "",
            ".",
            "..",
            "admin",
            "app",
            "ADMIN",
            "x",
            "%2e",
            "%2E",
            "%2e%2e",
            ".%2E",
            "%2E.",
            "%61dmin",
            "%61pp",
            "admin;x",
            "..;",
            ".;x",
            "..;x",
            "%2fadmin",
            "admin%2f",
            "%5cadmin",
            "\\admin",
            "%252e%252e",
            "%25%32%65",
            "%C0%AE%C0%AE",
            "%3b",
            "admin%3Bx",
            "%3f",
            "admin%23",
            "%00",
            "%0d%0a",
            "%7f",
            "~user",
            "%7euser",
            "%c3%a9",
            "é",
        ]);
        let piece = prop::sample::select(vec![
            ".", "a", "b", "admin", "app", "~", "-", ";", "=1", "%2e", "%2E", "%61", "%41", "%7e", "%2f", "%2F", "%5c", "\\", "%00", "%0a",
            "%25", "%3b", "%3f", "%23", "%3a", "%40", "%20", " ", "\"", "é", "%c3%a9", "%c3", "%a9", "%c0%ae", "%", "%z", ":", "@", "*",
        ]);
        let glued = prop::collection::vec(piece, 1..4).prop_map(|pieces| pieces.concat());
        let segment = prop_oneof![3 => whole.prop_map(String::from), 2 => glued];
        let separator = prop::sample::select(vec!["/", "/", "/", "//"]);
        prop::collection::vec((segment, separator), 0..6).prop_map(|parts| {
            let mut path = String::from("/");
            for (i, (segment, separator)) in parts.iter().enumerate() {
                if i > 0 {
                    path.push_str(separator);
                }
                path.push_str(segment);
            }
            path
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// The hot path's shortcut never accepts what the full pass would change or refuse.
        #[test]
        fn shortcut_agrees_with_the_full_pass(path in prop_oneof![hostile_path(), "/[ -~]{0,24}"]) {
            for refuse in [true, false] {
                if is_plainly_canonical(path.as_bytes(), refuse) {
                    prop_assert!(matches!(full_pass(&path, refuse), Ok(Cow::Borrowed(_))), "{path:?}");
                }
            }
        }

        /// canon(canon(p)) == canon(p), and a canonical path is returned borrowed (not copied).
        #[test]
        fn idempotent(path in prop_oneof![hostile_path(), "/[ -~]{0,24}"]) {
            for parameters in [PathParameters::Refuse, PathParameters::Pass] {
                if let Ok(once) = canonicalize_path(&path, parameters) {
                    let twice = canonicalize_path(&once, parameters);
                    prop_assert!(matches!(twice, Ok(Cow::Borrowed(_))), "{path:?} → {once:?} → {twice:?}");
                }
            }
        }

        /// A canonical path has no `//`, no dot segment, no decodable unreserved escape, no
        /// lower-case hex, nothing a URI cannot carry raw.
        #[test]
        fn canonical_shape(path in prop_oneof![hostile_path(), "/[ -~]{0,24}"]) {
            if let Ok(c) = canonicalize_path(&path, PathParameters::Refuse) {
                let padded = format!("{c}/");
                prop_assert!(c.starts_with('/'));
                prop_assert!(!c.contains("//") && !padded.contains("/./") && !padded.contains("/../"), "{c}");
                prop_assert!(!c.contains(';') && !c.contains('\\'), "{c}");
                let bytes = c.as_bytes();
                for (i, &b) in bytes.iter().enumerate() {
                    prop_assert!(b.is_ascii_graphic(), "{c}");
                    if b == b'%' {
                        let value = u8::from_str_radix(&c[i + 1..i + 3], 16).unwrap();
                        prop_assert!(CLASS[value as usize] != Class::Unreserved, "{c}");
                        prop_assert!(c[i + 1..i + 3].bytes().all(|h| h.is_ascii_digit() || h.is_ascii_uppercase()), "{c}");
                    }
                }
                prop_assert!(c.parse::<PathAndQuery>().is_ok(), "{c}");
            }
        }
    }
}
