//! gRPC on tonic's HTTP/2 server for serve's one kind of call (a bidirectional stream of
//! discovery requests and responses), written so a stream holds nothing between messages.
//! tonic's own codec keeps, per stream, a decode buffer the size of the largest message it read
//! (an Envoy's first request: its node with ~60 KB of extensions, of which serve reads the id)
//! and an encode buffer the size of the largest it wrote (the policy's configurations); at fleet
//! size that is most of serve's memory. Here a request's bytes are let go once it is decoded, and
//! a response is sent as the snapshot's own shared bytes.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame};
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;

use super::proto::DiscoveryRequest;

/// gRPC's message prefix: a compressed flag and a 4-byte big-endian length.
const PREFIX: usize = 5;

/// The largest request read (tonic's default limit): an Envoy's is ~60 KB.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// A call's requests, one message at a time, from its HTTP/2 request body.
pub struct Requests<B> {
    body: B,
    /// Bytes of a message not yet whole; a fresh buffer once it is.
    pending: BytesMut,
    ended: bool,
}

impl<B> Requests<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    pub fn new(body: B) -> Requests<B> {
        Requests { body, pending: BytesMut::new(), ended: false }
    }

    /// The next request; `None` once the proxy closed its side.
    pub async fn message(&mut self) -> Result<Option<DiscoveryRequest>, Status> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<DiscoveryRequest>, Status>> {
        loop {
            if let Some(message) = self.whole_message()? {
                return Poll::Ready(Ok(Some(message)));
            }
            if self.ended {
                return Poll::Ready(if self.pending.is_empty() {
                    Ok(None)
                } else {
                    Err(Status::invalid_argument("the stream ended inside a message"))
                });
            }
            match std::task::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            let n = chunk.len();
                            self.pending.extend_from_slice(chunk);
                            data.advance(n);
                        }
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(Status::cancelled(format!("error reading a body from connection: {e}")))),
                None => self.ended = true,
            }
        }
    }

    /// The first whole message in `pending`, decoded; its bytes let go.
    fn whole_message(&mut self) -> Result<Option<DiscoveryRequest>, Status> {
        if self.pending.len() < PREFIX {
            return Ok(None);
        }
        if self.pending[0] != 0 {
            return Err(Status::unimplemented("compressed requests: meshward serve reads uncompressed xDS"));
        }
        let announced = u32::from_be_bytes([self.pending[1], self.pending[2], self.pending[3], self.pending[4]]) as usize;
        if announced > MAX_REQUEST_BYTES {
            return Err(Status::resource_exhausted(format!("a request of {announced} bytes: at most {MAX_REQUEST_BYTES}")));
        }
        if self.pending.len() < PREFIX + announced {
            return Ok(None);
        }
        let decoded = DiscoveryRequest::decode(&self.pending[PREFIX..PREFIX + announced]);
        self.pending.advance(PREFIX + announced);
        if self.pending.is_empty() {
            // Not `clear`: that would keep the allocation, sized for the largest message.
            self.pending = BytesMut::new();
        }
        decoded.map(Some).map_err(|e| Status::invalid_argument(format!("not a DiscoveryRequest: {e}")))
    }
}

/// What a call's task sends: a response message in pieces, or the call's end.
pub type Outgoing = Result<Vec<Bytes>, Status>;

/// A call's response body: the messages its task sends, then its status as trailers (`OK` when
/// the task ends without one).
pub struct Replies {
    receiver: mpsc::Receiver<Outgoing>,
    pieces: VecDeque<Bytes>,
    ended: bool,
}

impl Replies {
    pub fn new(receiver: mpsc::Receiver<Outgoing>) -> Replies {
        Replies { receiver, pieces: VecDeque::new(), ended: false }
    }
}

impl Body for Replies {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(piece) = this.pieces.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        let status = match std::task::ready!(this.receiver.poll_recv(cx)) {
            Some(Ok(pieces)) => {
                this.pieces.extend(pieces);
                return match this.pieces.pop_front() {
                    Some(piece) => Poll::Ready(Some(Ok(Frame::data(piece)))),
                    None => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                };
            }
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        this.ended = true;
        let mut trailers = http::HeaderMap::new();
        // A message that cannot be a header value leaves the code alone.
        if status.add_header(&mut trailers).is_err() {
            let _ = Status::new(status.code(), "").add_header(&mut trailers);
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.pieces.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::proto::Node;

    /// A request body of these bytes, arriving in pieces of `piece` bytes.
    struct Pieces(VecDeque<Bytes>);

    impl Body for Pieces {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn body(wire: &[u8], piece: usize) -> Pieces {
        Pieces(wire.chunks(piece).map(Bytes::copy_from_slice).collect())
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    /// An Envoy's first request: its node carries ~60 KB serve does not read (its extensions,
    /// field 9, here as a second occurrence of the node, which protobuf merges).
    fn envoy_first_request() -> (DiscoveryRequest, Vec<u8>) {
        let request = DiscoveryRequest {
            node: Some(Node { id: "proxy-1".into(), cluster: "c".into() }),
            resource_names: vec!["meshward.bundle".into()],
            type_url: "t".into(),
            ..Default::default()
        };
        let mut message = request.encode_to_vec();
        let mut extensions = Vec::new();
        prost::encoding::bytes::encode(9, &vec![b'x'; 60_000], &mut extensions);
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut message);
        prost::encoding::encode_varint(extensions.len() as u64, &mut message);
        message.extend_from_slice(&extensions);
        (request, framed(&message))
    }

    fn read_all(wire: &[u8], piece: usize) -> (Vec<Result<Option<DiscoveryRequest>, Status>>, usize) {
        let mut requests = Requests::new(body(wire, piece));
        let mut out = Vec::new();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        loop {
            let Poll::Ready(next) = requests.poll_message(&mut cx) else { unreachable!("the body is always ready") };
            let last = !matches!(next, Ok(Some(_)));
            out.push(next);
            if last {
                return (out, requests.pending.capacity());
            }
        }
    }

    #[test]
    fn requests_are_read_whole_in_any_pieces_and_their_bytes_let_go() {
        let (first, wire_first) = envoy_first_request();
        let ack = DiscoveryRequest { version_info: "v1".into(), response_nonce: "1".into(), type_url: "t".into(), ..Default::default() };
        let wire = [wire_first, framed(&ack.encode_to_vec())].concat();
        for piece in [1, 7, 16_384, wire.len()] {
            let (read, capacity) = read_all(&wire, piece);
            assert_eq!(read.len(), 3, "piece {piece}");
            assert_eq!(read[0].as_ref().unwrap().as_ref(), Some(&first));
            assert_eq!(read[1].as_ref().unwrap().as_ref(), Some(&ack));
            assert!(matches!(read[2], Ok(None)));
            assert_eq!(capacity, 0, "nothing kept between messages");
        }
    }

    #[test]
    fn what_is_not_a_request_ends_the_call() {
        let (_, mut compressed) = envoy_first_request();
        compressed[0] = 1;
        assert_eq!(read_all(&compressed, 4096).0[0].as_ref().unwrap_err().code(), tonic::Code::Unimplemented);
        let garbage = framed(&[0xff; 64]);
        assert_eq!(read_all(&garbage, 10).0[0].as_ref().unwrap_err().code(), tonic::Code::InvalidArgument);
        let huge = [0, 0x7f, 0xff, 0xff, 0xff];
        assert_eq!(read_all(&huge, 5).0[0].as_ref().unwrap_err().code(), tonic::Code::ResourceExhausted);
        let cut = &framed(&[0x0a, 0x02, b'v', b'1'])[..7];
        assert_eq!(read_all(cut, 3).0[0].as_ref().unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
