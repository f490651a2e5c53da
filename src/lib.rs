//! cielr
