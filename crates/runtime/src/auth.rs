//! The one place every RPC on both servers is authenticated: a tower layer that turns
//! `authorization: Bearer <token>` into a [`Principal`] in the request extensions, or
//! answers UNAUTHENTICATED before any handler runs. Health checks and reflection stay
//! open so probes and grpcurl work without a token.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use toolplane_core::model::{Principal, Role};
use toolplane_core::token::parse_bearer;

/// gRPC paths that need no token.
const OPEN_PREFIXES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Resolves a bearer token to a principal. `None` means "not a valid token": missing,
/// unknown, expired and revoked all look the same to the caller.
#[async_trait::async_trait]
pub trait Authenticate: Send + Sync + 'static {
    async fn authenticate(&self, token: &str) -> Result<Option<Principal>, tonic::Status>;
}

#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<dyn Authenticate>,
}

impl AuthLayer {
    pub fn new(auth: Arc<dyn Authenticate>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<dyn Authenticate>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        // Take the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let path = req.uri().path();
            if OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
                return inner.call(req).await;
            }
            let token = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_bearer)
                .map(str::to_owned);
            let outcome = match token {
                None => Err(tonic::Status::unauthenticated(
                    "missing `authorization: Bearer <token>` metadata",
                )),
                Some(token) => match auth.authenticate(&token).await {
                    Ok(Some(p)) => Ok(p),
                    Ok(None) => Err(tonic::Status::unauthenticated("invalid, expired or revoked token")),
                    Err(status) => Err(status),
                },
            };
            match outcome {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The authenticated caller of a request that passed [`AuthLayer`].
pub fn principal<T>(req: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("request was not authenticated"))
}

/// Role checks on the authenticated caller.
pub trait PrincipalExt {
    fn role(&self) -> Role;
    /// PERMISSION_DENIED unless the caller has one of `roles`.
    fn require(&self, roles: &[Role], what: &str) -> Result<(), tonic::Status>;
}

impl PrincipalExt for Principal {
    fn role(&self) -> Role {
        match self {
            Principal::Admin { .. } => Role::Admin,
            Principal::Agent { .. } => Role::Agent,
            Principal::Sidecar { .. } => Role::Sidecar,
            Principal::Auditor { .. } => Role::Auditor,
        }
    }

    fn require(&self, roles: &[Role], what: &str) -> Result<(), tonic::Status> {
        if roles.contains(&self.role()) {
            Ok(())
        } else {
            Err(tonic::Status::permission_denied(format!(
                "{what} is not allowed for the {} role",
                self.role()
            )))
        }
    }
}
