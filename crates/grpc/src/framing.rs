//! gRPC's length-prefixed messages: a compressed flag (0 or 1), a big-endian u32 length, the
//! message. A request body is a sequence of them (exactly one for unary and server-streaming
//! calls).

use crate::GrpcError;

/// One message as it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Compressed with the call's `grpc-encoding`.
    pub compressed: bool,
    pub message: &'a [u8],
}

/// The messages of a body; anything left over, cut short or flagged otherwise is malformed.
pub fn frames(body: &[u8]) -> Result<Vec<Frame<'_>>, GrpcError> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (Some(&flag), Some(length)) = (rest.first(), rest.get(1..5)) else { return Err(GrpcError::MalformedFrame) };
        let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
        let compressed = match flag {
            0 => false,
            1 => true,
            _ => return Err(GrpcError::MalformedFrame),
        };
        let message = rest.get(5..5 + length).ok_or(GrpcError::MalformedFrame)?;
        out.push(Frame { compressed, message });
        rest = &rest[5 + length..];
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
    }
}
