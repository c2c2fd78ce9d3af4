//! Client-side helper: attaches `authorization: Bearer <token>` to every call.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;

#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// `None` when the token has characters a header cannot carry.
    pub fn new(token: Option<&str>) -> Option<Self> {
        match token {
            None => Some(Self(None)),
            Some(t) => format!("Bearer {t}").parse().ok().map(|v| Self(Some(v))),
        }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}
