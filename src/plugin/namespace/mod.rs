//! Namespaces: many users on one daemon, each seeing only their own containers, volumes, networks,
//! exec instances and images.
//!
//! Names are mangled on the way in and de-mangled on the way out ([`names`]); ownership is recorded
//! on the daemon itself (labels, image tags) so that a restarted ctproxy rebuilds nothing.

pub mod names;

pub use names::{NameError, NsName, MARKER, NS_LABEL};
