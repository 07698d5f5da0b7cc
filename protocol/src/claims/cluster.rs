//! Zero-configuration cluster formation. (Being written.)
