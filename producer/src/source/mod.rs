//! Where frames come from. Today: the synthetic pattern; the decoder and the V4L2 webcam come
//! with their own issue.

pub mod pattern;
