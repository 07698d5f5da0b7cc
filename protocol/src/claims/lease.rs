//! The holder's local deadline. (Being written.)
