//! TLS ClientHello inspection shared by the kernel gate and the daemon: the record and
//! handshake reader ([`hello`]), JA4 ([`ja4`]), the SHA-256 it needs ([`sha256`]) and the
//! bounded TCP reassembly of a client's first bytes ([`stream`]).

pub mod gate;
pub mod hello;
pub mod ja4;
pub mod sha256;
pub mod stream;

use hello::{Assembly, ClientHello, HelloError, assemble_handshake, parse_client_hello};

/// Where the first bytes of a client's stream stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No decision yet: the hello is not whole.
    NeedMore,
    /// The hello is whole and was read into the [`ClientHello`].
    Hello,
    /// The stream does not start with a usable ClientHello.
    Invalid(HelloError),
}

/// Reads the ClientHello at the start of `stream` (the client's bytes in order from the
/// first, as [`stream::FirstBytes::contiguous`] gives them) into `hello`, using `scratch`
/// ([`hello::MAX_HELLO_LEN`] bytes) to join the records it spans.
pub fn read_hello(stream: &[u8], scratch: &mut [u8], hello: &mut ClientHello) -> Outcome {
    match assemble_handshake(stream, scratch) {
        Assembly::NeedMore => Outcome::NeedMore,
        Assembly::Invalid(e) => Outcome::Invalid(e),
        Assembly::Complete { len } => match scratch.get(..len) {
            Some(msg) => match parse_client_hello(msg, hello) {
                Ok(()) => Outcome::Hello,
                Err(e) => Outcome::Invalid(e),
            },
            None => Outcome::Invalid(HelloError::TooLarge),
        },
    }
}
