//! gRPC's length-prefixed messages: a compressed flag (0 or 1), a big-endian u32 length, the
//! message. A request body is a sequence of them (exactly one for unary and server-streaming
//! calls; any number, arriving over time, for client-streaming and bidirectional ones).

use crate::GrpcError;

/// One message as it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Compressed with the call's `grpc-encoding`.
    pub compressed: bool,
    pub message: &'a [u8],
}

/// Bytes before each message: the flag and the length.
pub const PREFIX: usize = 5;

/// The first message of `bytes` once all of it is there, with the bytes it takes; `None` while
/// it is still arriving. A flag other than 0 or 1 is malformed; a length over `max_bytes` is
/// refused before the message is waited for.
pub fn next_frame(bytes: &[u8], max_bytes: usize) -> Result<Option<(Frame<'_>, usize)>, GrpcError> {
    let Some((compressed, length)) = prefix(bytes)? else { return Ok(None) };
    if length > max_bytes {
        return Err(GrpcError::MessageTooLarge { max_bytes });
    }
    Ok(bytes.get(PREFIX..PREFIX + length).map(|message| (Frame { compressed, message }, PREFIX + length)))
}

/// The start of a body that must carry exactly one message (a unary or server-streaming call),
/// `size` bytes of it here so far: refused as soon as the prefix announces more than
/// `max_bytes`, or more bytes arrive than the one message it announces.
pub fn check_single_head(head: &[u8], size: usize, max_bytes: usize) -> Result<(), GrpcError> {
    let Some((_, length)) = prefix(head)? else { return Ok(()) };
    if length > max_bytes {
        return Err(GrpcError::MessageTooLarge { max_bytes });
    }
    if size > PREFIX + length {
        return Err(GrpcError::MalformedFrame);
    }
    Ok(())
}

/// A message's flag and announced length, once all five bytes are there.
fn prefix(bytes: &[u8]) -> Result<Option<(bool, usize)>, GrpcError> {
    let Some(&flag) = bytes.first() else { return Ok(None) };
    let compressed = match flag {
        0 => false,
        1 => true,
        _ => return Err(GrpcError::MalformedFrame),
    };
    let Some(length) = bytes.get(1..PREFIX) else { return Ok(None) };
    Ok(Some((compressed, u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize)))
}

/// The messages of a body; anything left over, cut short or flagged otherwise is malformed.
pub fn frames(body: &[u8]) -> Result<Vec<Frame<'_>>, GrpcError> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let Some((frame, taken)) = next_frame(rest, usize::MAX)? else { return Err(GrpcError::MalformedFrame) };
        out.push(frame);
        rest = &rest[taken..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_strictly() {
        let one = [0, 0, 0, 0, 2, 8, 1];
        assert_eq!(frames(&one), Ok(vec![Frame { compressed: false, message: &[8, 1] }]));
        let two = [0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 9];
        assert_eq!(frames(&two).map(|f| f.len()), Ok(2));
        assert_eq!(frames(&[]), Ok(vec![]));
        for bad in [&[0u8, 0, 0][..], &[0, 0, 0, 0, 3, 8, 1], &[2, 0, 0, 0, 0], &[0, 0, 0, 0, 1, 8, 0]] {
            assert_eq!(frames(bad), Err(GrpcError::MalformedFrame), "{bad:?}");
        }
        // As a stream arrives: nothing until a message is whole; a length past the limit at once.
        assert_eq!(next_frame(&[0, 0, 0], 8), Ok(None));
        assert_eq!(next_frame(&[0, 0, 0, 0, 2, 8], 8), Ok(None));
        assert_eq!(next_frame(&[1, 0, 0, 0, 2, 8, 1, 0], 8), Ok(Some((Frame { compressed: true, message: &[8, 1] }, 7))));
        assert_eq!(next_frame(&[0, 0, 0, 0, 9], 8), Err(GrpcError::MessageTooLarge { max_bytes: 8 }));
        assert_eq!(next_frame(&[7], 8), Err(GrpcError::MalformedFrame));
    }

    #[test]
    fn a_single_message_is_bounded_from_its_prefix() {
        // (what arrived, its first bytes, bytes so far, the decision)
        type Row<'a> = (&'a str, &'a [u8], usize, Result<(), GrpcError>);
        let rows: [Row; 7] = [
            ("nothing yet", &[], 0, Ok(())),
            ("the prefix cut short", &[0, 0, 0], 3, Ok(())),
            ("within the limit, arriving", &[0, 0, 0, 0, 8], 9, Ok(())),
            ("within the limit, whole", &[0, 0, 0, 0, 8], 13, Ok(())),
            ("announced over the limit, nothing of it here", &[0, 0, 0, 0, 9], 5, Err(GrpcError::MessageTooLarge { max_bytes: 8 })),
            ("more than the one message", &[1, 0, 0, 0, 2], 8, Err(GrpcError::MalformedFrame)),
            ("a flag that is neither", &[2], 1, Err(GrpcError::MalformedFrame)),
        ];
        for (name, head, size, expected) in rows {
            assert_eq!(check_single_head(head, size, 8), expected, "{name}");
        }
    }
}
