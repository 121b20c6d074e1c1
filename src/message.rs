//! The proxy's own request head and answer. hyper's `Request` and `Response` carry a
//! `HeaderMap`; these carry [`Fields`], which on the plain-HTTP/1 path are the bytes the head
//! was read into (see `fields`). hyper's messages convert into them for free, and back into
//! hyper's where hyper serves the client (TLS, HTTP/2).

use crate::fields::Fields;
use hyper::{Method, Request, Response, StatusCode, Uri};

/// What the proxy reads of a client's request, besides its body.
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub fields: Fields,
}

impl RequestHead {
    /// The head of a request hyper parsed, and its body.
    pub fn split<B>(req: Request<B>) -> (RequestHead, B) {
        let (parts, body) = req.into_parts();
        (RequestHead { method: parts.method, uri: parts.uri, fields: Fields::Map(parts.headers) }, body)
    }
}

/// A response: from an upstream, or made by the proxy.
pub struct Answer<B> {
    pub status: StatusCode,
    pub fields: Fields,
    pub body: B,
}

impl<B> Answer<B> {
    pub fn map<C>(self, f: impl FnOnce(B) -> C) -> Answer<C> {
        Answer { status: self.status, fields: self.fields, body: f(self.body) }
    }

    /// The answer as hyper's response, for hyper to serve.
    pub fn into_response(self) -> Response<B> {
        let mut resp = Response::new(self.body);
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.fields.into_map();
        resp
    }
}

impl<B> From<Response<B>> for Answer<B> {
    fn from(resp: Response<B>) -> Self {
        let (parts, body) = resp.into_parts();
        Answer { status: parts.status, fields: Fields::Map(parts.headers), body }
    }
}
