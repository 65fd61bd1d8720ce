//! Outbound networking, once for the whole daemon: name resolution with
//! operator pins ([`resolve`]), which resolved addresses may be dialled
//! ([`addr_class`]), the one resolve → check → connect loop ([`dial`]) and
//! TLS client trust ([`tls`]). The CONNECT path, the lane router's
//! connector, the policy fetcher and the kernel map writer all use these.

pub mod addr_class;
pub mod dial;
pub mod resolve;
pub mod tls;
