//! Policy: the config file format, its validated model, the compiler to map contents, and a
//! reference classifier.

pub mod config;
pub mod conntrack;
pub mod model;
pub mod namelist;
pub mod setfile;
