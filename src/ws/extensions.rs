//! permessage-deflate negotiation (RFC 7692 §5, §7.1): offers in, one agreement out (pure).
//!
//! The gateway is a server on the client hop (it picks the first acceptable offer and answers
//! it) and a client on the backend hop (it offers, then checks the backend's answer). Nothing
//! here touches a socket; `deflate.rs` runs the codec an agreement describes.

/// How a route wants compression on its client hop (`compression_*` route keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflatePolicy {
    /// Keep the gateway's compressor between messages (better ratio, more memory).
    pub server_context_takeover: bool,
    /// Let the client keep its compressor between messages; false asks it not to
    /// (`client_no_context_takeover`), so the gateway frees its decompressor after each message.
    pub client_context_takeover: bool,
    /// Most LZ77 window bits the gateway compresses with (9..=15).
    pub server_max_window_bits: u8,
    /// Most window bits the client may compress with (9..=15), when it lets us say.
    pub client_max_window_bits: u8,
    /// zlib compression level (0..=9).
    pub level: u8,
}

impl Default for DeflatePolicy {
    fn default() -> Self {
        Self {
            server_context_takeover: true,
            client_context_takeover: true,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            level: 1,
        }
    }
}

/// What one hop agreed on. "Server" is the side that answered the offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    /// Window bits the server compresses with (at most; 9..=15).
    pub server_max_window_bits: u8,
    /// Window bits the client compresses with (at most; 8..=15).
    pub client_max_window_bits: u8,
    /// Which parameters go into the response (RFC 7692 §7.1.2: a window-bits answer only
    /// where the offer allows one).
    answer_server_bits: bool,
    answer_client_bits: bool,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` value that accepts the offer.
    pub fn response(&self) -> String {
        let mut out = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            out.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        if self.answer_server_bits {
            out.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        if self.answer_client_bits {
            out.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_max_window_bits
            ));
        }
        out
    }
}

/// One permessage-deflate offer's parameters, as sent (RFC 7692 §7.1).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: the parameter without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// Choose the first acceptable permessage-deflate offer in the request's
/// `Sec-WebSocket-Extensions` values. Malformed offers and offers we cannot honour are
/// declined (skipped), so the answer is the next acceptable one or no compression.
pub fn negotiate<'a>(
    header_values: impl IntoIterator<Item = &'a str>,
    policy: &DeflatePolicy,
) -> Option<Agreement> {
    header_values
        .into_iter()
        .flat_map(split_list)
        .filter_map(|ext| parse_extension(ext).ok())
        .filter(|(name, _)| name.eq_ignore_ascii_case("permessage-deflate"))
        .find_map(|(_, params)| accept(&params.ok()?, policy))
}

fn accept(offer: &Params, policy: &DeflatePolicy) -> Option<Agreement> {
    // The client asks us to use at most this window. zlib cannot compress raw deflate with
    // a 256-byte window (8 bits), so that offer is declined.
    let server_bits = match offer.server_max_window_bits {
        Some(8) => return None,
        Some(bits) => bits.min(policy.server_max_window_bits),
        None => policy.server_max_window_bits,
    };
    let (client_bits, answer_client_bits) = match offer.client_max_window_bits {
        // The client may not understand the parameter: it compresses with up to 15 bits.
        None => (15, false),
        Some(hint) => {
            let bits = policy.client_max_window_bits.min(hint.unwrap_or(15));
            (bits, bits < 15 || hint.is_some())
        }
    };
    Some(Agreement {
        server_no_context_takeover: offer.server_no_context_takeover,
        // The client's own hint is made binding: then its messages need no kept window.
        client_no_context_takeover: offer.client_no_context_takeover
            || !policy.client_context_takeover,
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits,
        answer_server_bits: offer.server_max_window_bits.is_some(),
        answer_client_bits,
    })
}

/// The offer the gateway makes to a WebSocket backend for a client hop that agreed on
/// `client`: parameters chosen so that the backend's natural answer lets frames pass
/// through unchanged (its compressor no larger, and resetting wherever the client's does).
pub fn backend_offer(client: &Agreement) -> String {
    let mut out = String::from("permessage-deflate");
    if client.server_no_context_takeover {
        out.push_str("; server_no_context_takeover");
    }
    if client.server_max_window_bits < 15 {
        out.push_str(&format!(
            "; server_max_window_bits={}",
            client.server_max_window_bits
        ));
    }
    if client.client_no_context_takeover {
        out.push_str("; client_no_context_takeover");
    }
    out.push_str("; client_max_window_bits");
    out
}

/// Check a backend's answer to `backend_offer` (RFC 7692 §7.1: a client fails the
/// connection on an answer it did not allow). `Ok(None)`: the backend declined compression.
pub fn check_answer<'a>(
    header_values: impl IntoIterator<Item = &'a str>,
    offered: &Agreement,
) -> Result<Option<Agreement>, &'static str> {
    let mut found = None;
    for ext in header_values.into_iter().flat_map(split_list) {
        let (name, params) = parse_extension(ext)?;
        if !name.eq_ignore_ascii_case("permessage-deflate") {
            return Err("the backend answered with an extension we did not offer");
        }
        if found.is_some() {
            return Err("the backend accepted permessage-deflate twice");
        }
        let params = params.map_err(|_| "malformed permessage-deflate answer")?;
        let server_bits = match params.server_max_window_bits {
            None => 15,
            Some(b)
                if offered.server_max_window_bits < 15 && b > offered.server_max_window_bits =>
            {
                return Err("server_max_window_bits above our offer")
            }
            // Our inflater needs at least 9 bits; a smaller server window still decodes.
            Some(b) => b,
        };
        if offered.server_no_context_takeover && !params.server_no_context_takeover {
            return Err("server_no_context_takeover missing from the answer");
        }
        let client_bits = match params.client_max_window_bits {
            None => 15,
            Some(None) => return Err("client_max_window_bits without a value in an answer"),
            Some(Some(b)) => b,
        };
        found = Some(Agreement {
            server_no_context_takeover: params.server_no_context_takeover,
            client_no_context_takeover: params.client_no_context_takeover,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits,
            answer_server_bits: false,
            answer_client_bits: false,
        });
    }
    Ok(found)
}

/// Split a header value at commas outside quoted strings.
fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty())
}

type Parsed<'a> = (&'a str, Result<Params, &'static str>);

/// One `extension *( ";" param )`. The outer error is a broken element (no name); the inner
/// one a permessage-deflate parameter list that is not valid (unknown, duplicate, bad value).
fn parse_extension(ext: &str) -> Result<Parsed<'_>, &'static str> {
    let mut items = ext.split(';').map(str::trim);
    let name = items.next().unwrap_or_default();
    if !is_token(name) {
        return Err("malformed extension name");
    }
    let mut params = Params::default();
    let mut bad = None;
    for item in items {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), Some(unquote(v.trim()))),
            None => (item, None),
        };
        if let Err(e) = set_param(&mut params, key, value) {
            bad.get_or_insert(e);
        }
    }
    Ok((name, bad.map_or(Ok(params), Err)))
}

fn set_param(p: &mut Params, key: &str, value: Option<Option<&str>>) -> Result<(), &'static str> {
    let bits = |v: Option<Option<&str>>| -> Result<Option<u8>, &'static str> {
        match v {
            None => Ok(None),
            // 1*DIGIT without a leading zero, 8..=15 (§7.1.2).
            Some(Some(s)) if !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit()) => {
                match s.parse::<u8>() {
                    Ok(b @ 8..=15) => Ok(Some(b)),
                    _ => Err("window bits out of range"),
                }
            }
            Some(_) => Err("bad window bits value"),
        }
    };
    let flag = |seen: bool, v: &Option<Option<&str>>| match (seen, v) {
        (true, _) => Err("duplicate parameter"),
        (false, Some(_)) => Err("parameter takes no value"),
        (false, None) => Ok(true),
    };
    match key.to_ascii_lowercase().as_str() {
        "server_no_context_takeover" => {
            p.server_no_context_takeover = flag(p.server_no_context_takeover, &value)?
        }
        "client_no_context_takeover" => {
            p.client_no_context_takeover = flag(p.client_no_context_takeover, &value)?
        }
        "server_max_window_bits" => {
            if p.server_max_window_bits.is_some() {
                return Err("duplicate parameter");
            }
            p.server_max_window_bits =
                Some(bits(value)?.ok_or("server_max_window_bits needs a value")?);
        }
        "client_max_window_bits" => {
            if p.client_max_window_bits.is_some() {
                return Err("duplicate parameter");
            }
            p.client_max_window_bits = Some(bits(value)?);
        }
        _ => return Err("unknown parameter"),
    }
    Ok(())
}

/// A parameter value: a token or a quoted string (`None` when the quotes are broken).
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').filter(|s| !s.contains(['"', '\\'])),
        None => is_token(v).then_some(v),
    }
}

/// RFC 7230 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(offer: &str) -> Option<String> {
        negotiate([offer], &DeflatePolicy::default()).map(|a| a.response())
    }

    #[test]
    fn plain_offer_and_browser_offer() {
        assert_eq!(
            answer("permessage-deflate").as_deref(),
            Some("permessage-deflate")
        );
        // What Chromium and Firefox send.
        assert_eq!(
            answer("permessage-deflate; client_max_window_bits").as_deref(),
            Some("permessage-deflate")
        );
    }

    #[test]
    fn each_parameter_is_honoured() {
        let a = negotiate(
            ["permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12"],
            &DeflatePolicy::default(),
        )
        .unwrap();
        assert!(a.server_no_context_takeover && a.client_no_context_takeover);
        assert_eq!(
            (a.server_max_window_bits, a.client_max_window_bits),
            (10, 12)
        );
        assert_eq!(
            a.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12"
        );
        // Quoted values are the same values (§7.1: token or quoted-string).
        assert_eq!(
            answer("permessage-deflate; server_max_window_bits=\"9\"").as_deref(),
            Some("permessage-deflate; server_max_window_bits=9")
        );
    }

    #[test]
    fn the_first_acceptable_offer_wins() {
        // Autobahn 13.7: three offers, the first one usable.
        let offers = "permessage-deflate; server_no_context_takeover; server_max_window_bits=9, permessage-deflate; server_no_context_takeover, permessage-deflate";
        assert_eq!(
            answer(offers).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=9")
        );
        // Several header lines count as one list; other extensions are skipped.
        let a = negotiate(
            [
                "x-webkit-deflate-frame",
                "foo; bar=1, permessage-deflate; server_max_window_bits=8",
                "permessage-deflate; client_no_context_takeover",
            ],
            &DeflatePolicy::default(),
        );
        assert_eq!(
            a.map(|a| a.response()).as_deref(),
            Some("permessage-deflate; client_no_context_takeover")
        );
    }

    #[test]
    fn malformed_and_duplicate_parameters_are_declined() {
        for offer in [
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; mystery",
            "permessage-deflate; client_max_window_bits=\"1",
            // zlib cannot compress with a 256-byte window: declined, not lied about.
            "permessage-deflate; server_max_window_bits=8",
            "",
            "; permessage-deflate",
        ] {
            assert_eq!(answer(offer), None, "{offer}");
        }
        // A declined offer does not spoil the next one.
        assert_eq!(
            answer("permessage-deflate; mystery, permessage-deflate").as_deref(),
            Some("permessage-deflate")
        );
    }

    #[test]
    fn policy_shapes_the_answer() {
        let policy = DeflatePolicy {
            client_context_takeover: false,
            client_max_window_bits: 10,
            server_max_window_bits: 11,
            ..DeflatePolicy::default()
        };
        let a = negotiate(["permessage-deflate; client_max_window_bits"], &policy).unwrap();
        assert_eq!(
            a.response(),
            "permessage-deflate; client_no_context_takeover; client_max_window_bits=10"
        );
        // Our smaller window needs no announcement: the client can decode it anyway.
        assert_eq!(a.server_max_window_bits, 11);
        // Without the client's consent we cannot limit its window: it may use 15 bits.
        let a = negotiate(["permessage-deflate"], &policy).unwrap();
        assert_eq!(a.client_max_window_bits, 15);
        assert_eq!(
            a.response(),
            "permessage-deflate; client_no_context_takeover"
        );
        // A client hint below ours is echoed.
        let a = negotiate(["permessage-deflate; client_max_window_bits=9"], &policy).unwrap();
        assert_eq!(a.client_max_window_bits, 9);
    }

    #[test]
    fn backend_answers_are_checked() {
        let client = negotiate(
            ["permessage-deflate; server_no_context_takeover; server_max_window_bits=10"],
            &DeflatePolicy::default(),
        )
        .unwrap();
        let offer = backend_offer(&client);
        assert_eq!(
            offer,
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; client_max_window_bits"
        );
        let ok = check_answer(
            ["permessage-deflate; server_no_context_takeover; server_max_window_bits=9"],
            &client,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ok.server_max_window_bits, 9);
        assert_eq!(check_answer([], &client), Ok(None));
        for bad in [
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits",
            "x-other",
            "permessage-deflate; server_no_context_takeover; bogus",
        ] {
            assert!(check_answer([bad], &client).is_err(), "{bad}");
        }
    }
}
