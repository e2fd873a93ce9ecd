//! placeholder, replaced in the same series
