//! Which route and consumer a session belongs to. The worker sends the
//! binding with the request that opens a session and with every request
//! that reaches one; a session answers only requests of its own route and
//! consumer, and looks unknown to any other.
//!
//! On the wire (Spawn and Deliver payloads): the binding's length as a
//! big-endian `u16`, then `<route>\n<consumer>` (the consumer is empty when
//! the route has no authentication).

use std::fmt;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Binding {
    pub route: String,
    pub consumer: String,
}

impl Binding {
    /// Splits a binding off the front of `payload`; returns it and the rest.
    pub fn split(payload: &[u8]) -> Result<(Binding, &[u8]), String> {
        let [a, b, rest @ ..] = payload else { return Err("no binding".into()) };
        let len = u16::from_be_bytes([*a, *b]) as usize;
        if rest.len() < len {
            return Err(format!("binding of {len} bytes cut short"));
        }
        let (text, rest) = rest.split_at(len);
        let text = std::str::from_utf8(text).map_err(|_| "binding is not UTF-8".to_string())?;
        let (route, consumer) = text.split_once('\n').ok_or("binding without a route")?;
        Ok((Binding { route: route.to_owned(), consumer: consumer.to_owned() }, rest))
    }

    /// Whether the binding at the front of `payload` is this one; returns
    /// the rest after it. Allocates nothing: it runs for every message.
    pub fn strip<'a>(&self, payload: &'a [u8]) -> Option<&'a [u8]> {
        let [a, b, rest @ ..] = payload else { return None };
        let len = u16::from_be_bytes([*a, *b]) as usize;
        let (text, rest) = (rest.get(..len)?, rest.get(len..)?);
        let (route, consumer) = (self.route.as_bytes(), self.consumer.as_bytes());
        let same = text.len() == route.len() + 1 + consumer.len()
            && text.starts_with(route)
            && text[route.len()] == b'\n'
            && text.ends_with(consumer);
        same.then_some(rest)
    }

    /// The wire form (see the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let text = format!("{}\n{}", self.route, self.consumer);
        let mut out = (text.len().min(u16::MAX as usize) as u16).to_be_bytes().to_vec();
        out.extend_from_slice(text.as_bytes());
        out
    }
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.consumer.is_empty() {
            true => write!(f, "route {}", self.route),
            false => write!(f, "route {}, consumer {}", self.route, self.consumer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_matches_only_the_same_binding() {
        let b = Binding { route: "r1".into(), consumer: "alice".into() };
        let mut wire = b.encode();
        wire.extend_from_slice(b"rest");
        assert_eq!(b.strip(&wire), Some(&b"rest"[..]));
        for other in [("r1", "bob"), ("r", "1\nalice"), ("r1", "alicex"), ("r1", ""), ("r1\nalice", "")] {
            let o = Binding { route: other.0.into(), consumer: other.1.into() };
            assert_eq!(o.strip(&wire), None, "{other:?}");
        }
        assert_eq!(b.strip(&wire[..4]), None, "cut short");
        assert_eq!(b.strip(b""), None);
    }

    #[test]
    fn bindings_round_trip_and_bad_ones_are_named() {
        let b = Binding { route: "route#1".into(), consumer: "alice".into() };
        let mut wire = b.encode();
        wire.extend_from_slice(b"{}");
        let (back, rest) = Binding::split(&wire).expect("split");
        assert_eq!((back, rest), (b, &b"{}"[..]));
        let anonymous = Binding { route: "mcp".into(), consumer: String::new() };
        assert_eq!(Binding::split(&anonymous.encode()).expect("split").0, anonymous);
        assert!(Binding::split(b"\x00").is_err());
        assert!(Binding::split(b"\x00\x09route").unwrap_err().contains("cut short"));
        assert!(Binding::split(b"\x00\x05route").unwrap_err().contains("without a route"));
        assert!(Binding::split(b"\x00\x02\xff\n").unwrap_err().contains("UTF-8"));
    }
}
