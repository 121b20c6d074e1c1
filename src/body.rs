//! The one response body type every handler returns, and small constructors for it.

use crate::proxy::relay::RelayBody;
use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One type for relayed upstream bodies, mock bodies and proxy-made JSON. A relayed body — every
/// proxied response — is carried as it is (its state is already boxed once); anything else is
/// boxed, one allocation per response, not per frame. `Unsync` because hyper needs only `Send`.
pub enum ProxyBody {
    Relay(RelayBody),
    Other(UnsyncBoxBody<Bytes, BoxError>),
}

impl ProxyBody {
    pub fn boxed<B>(body: B) -> Self
    where
        B: Body<Data = Bytes, Error = BoxError> + Send + 'static,
    {
        ProxyBody::Other(body.boxed_unsync())
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Relay(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Other(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Relay(b) => b.is_end_stream(),
            ProxyBody::Other(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Relay(b) => b.size_hint(),
            ProxyBody::Other(b) => b.size_hint(),
        }
    }
}

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    ProxyBody::boxed(Full::new(bytes.into()).map_err(|never| match never {}))
}

pub fn empty() -> ProxyBody {
    ProxyBody::boxed(Empty::new().map_err(|never| match never {}))
}
