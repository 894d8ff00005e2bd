//! What one heartbeat may carry (issue 15): the leader refuses more conditions or
//! instance reports than any node has, and both sides cut long texts, so a heartbeat
//! stays small — the node API refuses messages over 512 KiB, and a refused heartbeat
//! would make its node look silent.

use crate::v1alpha1::HeartbeatRequest;

/// The most conditions a heartbeat's node status may carry.
pub const MAX_CONDITIONS: usize = 16;
/// The most instance reports one heartbeat may carry.
pub const MAX_INSTANCE_REPORTS: usize = 1024;
/// Longer texts in a heartbeat (a condition's or an instance's message) are cut to
/// this many bytes.
pub const MAX_TEXT: usize = 1024;

/// `text` cut to at most `max` bytes, at a character boundary, marked when cut.
pub fn cut(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
}

/// Cuts every text of a heartbeat to its bound (conditions' types and reasons to
/// 128 bytes, messages to [`MAX_TEXT`], and an instance's address, image and commit
/// to what such a thing can be).
pub fn cut_heartbeat(req: &mut HeartbeatRequest) {
    if let Some(status) = &mut req.node_status {
        for c in &mut status.conditions {
            cut(&mut c.r#type, 128);
            cut(&mut c.reason, 128);
            cut(&mut c.message, MAX_TEXT);
        }
    }
    for r in &mut req.instances {
        if let Some(s) = &mut r.status {
            cut(&mut s.reason, 128);
            cut(&mut s.message, MAX_TEXT);
            cut(&mut s.ip, 64);
            cut(&mut s.image_id, 256);
            cut(&mut s.built_commit, 64);
            cut(&mut s.container_id, 128);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_cut_at_a_character_boundary_and_marked() {
        let mut short = "fine".to_owned();
        cut(&mut short, 10);
        assert_eq!(short, "fine");
        let mut long = "é".repeat(100);
        cut(&mut long, 11);
        assert!(long.len() <= 11, "{long}");
        assert!(long.ends_with('…'));
        assert!(long.starts_with("éééé"));
    }
}
