//! Webhook signature verification as pure logic: configuration ([`config`]), header and
//! signature checks ([`verify`]), replay protection over shared data ([`replay`]), wired as a
//! [`meshward_core::Policy`] in [`stage`].
//!
//! Why a delivery was refused: [`verify::check_headers`] (headers, timestamp window),
//! [`verify::verify_signature`] (signature over the raw body), [`replay::check_and_remember`].
//! Every reason is a [`WebhookError`] variant.

pub mod config;
mod error;
pub mod replay;
pub mod stage;
pub mod verify;

pub use config::WebhookConfig;
pub use error::WebhookError;
pub use stage::{WebhookPolicy, WebhookStage};
