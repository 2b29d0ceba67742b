//! Connection ids and their poll tokens: a slot in a slab plus a generation, so an event
//! or timer meant for a connection that has ended is never delivered to the next one in
//! the same slot. Workers use them for sessions, the control thread for admin connections
//! and probes.

use mio::Token;

/// A connection's slot in its slab plus a generation, so an event or timer meant for a
/// connection that has ended is never delivered to the next one in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnId {
    pub slot: u32,
    pub generation: u32,
}

// Tokens pack a generation into the upper half of the word.
const _: () = assert!(usize::BITS >= 64, "tcplb needs a 64-bit target");

impl ConnId {
    /// The poll token of one of the connection's sockets (`socket` is 0 or 1): generation,
    /// slot and socket packed in one word. Tokens at the very top of the range are left to
    /// the loop's own sockets (listeners, wakers).
    pub fn token(self, socket: usize) -> Token {
        Token(((self.generation as usize) << 32) | ((self.slot as usize) << 1) | (socket & 1))
    }

    /// The connection and socket (0 or 1) a token names.
    pub fn from_token(token: Token) -> (ConnId, usize) {
        let id = ConnId {
            slot: ((token.0 >> 1) & 0x7fff_ffff) as u32,
            generation: (token.0 >> 32) as u32,
        };
        (id, token.0 & 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for (slot, generation) in [
            (0, 0),
            (1, 7),
            (0x7fff_fffe, u32::MAX - 1),
            (12345, 1 << 31),
        ] {
            let id = ConnId { slot, generation };
            for socket in [0, 1] {
                assert_eq!(ConnId::from_token(id.token(socket)), (id, socket));
            }
        }
        let a = ConnId {
            slot: 3,
            generation: 1,
        }
        .token(0);
        let b = ConnId {
            slot: 3,
            generation: 2,
        }
        .token(0);
        assert_ne!(a, b, "a reused slot gets a different token");
    }
}
