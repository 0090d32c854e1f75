//! The device session's unit tests: frame limits, refusals and token buckets.

use super::*;

#[test]
fn frames_over_the_size_are_refused() {
    let now = Instant::now();
    let mut limiter = FrameLimiter::new(now);
    assert_eq!(
        limiter.admit(MAX_TEXT_FRAME + 1, now),
        Err(Refusal::TooLarge)
    );
    assert_eq!(limiter.admit(100, now), Ok(()));
    assert_eq!(limiter.refused_total, 1);
}

#[test]
fn a_burst_past_the_bucket_is_refused_then_refills() {
    let now = Instant::now();
    let mut limiter = FrameLimiter::new(now);
    let admitted = (0..1000).filter(|_| limiter.admit(10, now).is_ok()).count();
    assert_eq!(admitted, FRAME_BURST as usize);
    assert!(!limiter.flooding(), "600 refusals is under the limit");
    let later = now + Duration::from_secs(1);
    assert!(
        limiter.admit(10, later).is_ok(),
        "a second later the bucket has refilled"
    );
}

#[test]
fn sustained_flooding_is_detected() {
    let now = Instant::now();
    let mut limiter = FrameLimiter::new(now);
    for _ in 0..(FRAME_BURST as u32 + MAX_REFUSALS_PER_WINDOW + 1) {
        let _ = limiter.admit(10, now);
    }
    assert!(limiter.flooding());
}

#[test]
fn batches_spend_the_event_budget_whole_or_not_at_all() {
    let now = Instant::now();
    let mut limiter = FrameLimiter::new(now);
    let full = EVENT_BURST as usize / MAX_BATCH_EVENTS;
    for _ in 0..full {
        assert_eq!(limiter.admit_events(MAX_BATCH_EVENTS, now), Ok(()));
    }
    assert_eq!(
        limiter.admit_events(MAX_BATCH_EVENTS, now),
        Err(Refusal::TooManyEvents)
    );
    assert_eq!(
        limiter.refused_total, 1,
        "a refused batch is one refused frame"
    );
    // A second refills EVENT_RATE_PER_SEC events: that many batches, not one more.
    let later = now + Duration::from_secs(1);
    let refilled = (0..100)
        .filter(|_| limiter.admit_events(MAX_BATCH_EVENTS, later).is_ok())
        .count();
    assert_eq!(refilled, EVENT_RATE_PER_SEC as usize / MAX_BATCH_EVENTS);
    assert_eq!(
        limiter.admit_events(MAX_BATCH_EVENTS + 1, later + Duration::from_secs(5)),
        Err(Refusal::BatchTooLarge)
    );
}

#[test]
fn full_batches_over_the_budget_are_cut_off_as_soon_as_single_frames() {
    let now = Instant::now();
    let mut singles = FrameLimiter::new(now);
    let mut batches = FrameLimiter::new(now);
    for _ in 0..EVENT_BURST as usize / MAX_BATCH_EVENTS {
        batches.admit_events(MAX_BATCH_EVENTS, now).unwrap();
    }
    for _ in 0..FRAME_BURST as usize {
        singles.admit(10, now).unwrap();
    }
    let frames_to_cut = |limiter: &mut FrameLimiter, batch: bool| {
        (1..=MAX_REFUSALS_PER_WINDOW + 1)
            .find(|_| {
                let _ = if batch {
                    limiter.admit_events(MAX_BATCH_EVENTS, now)
                } else {
                    limiter.admit(10, now)
                };
                limiter.flooding()
            })
            .expect("cut off")
    };
    let single_frames = frames_to_cut(&mut singles, false);
    let batch_frames = frames_to_cut(&mut batches, true);
    // Each refused batch carries eight frames' worth of the event budget.
    assert_eq!(single_frames, MAX_REFUSALS_PER_WINDOW + 1);
    assert_eq!(
        batch_frames,
        single_frames.div_ceil((MAX_BATCH_EVENTS as f64 / EVENTS_PER_REFUSAL) as u32)
    );
}

#[test]
fn a_paced_sender_at_the_limits_is_never_refused() {
    // A device at exactly the frame rate, each frame a full batch at the event rate.
    let start = Instant::now();
    let mut limiter = FrameLimiter::new(start);
    let per_frame = (EVENT_RATE_PER_SEC / FRAME_RATE_PER_SEC) as usize;
    for i in 0..(FRAME_RATE_PER_SEC as u64 * 10) {
        let now = start + Duration::from_micros(i * 1_000_000 / FRAME_RATE_PER_SEC as u64);
        assert_eq!(limiter.admit(1000, now), Ok(()));
        assert_eq!(limiter.admit_events(per_frame, now), Ok(()));
    }
    assert_eq!(limiter.refused_total, 0);
}

#[test]
fn a_batch_is_counted_without_parsing_its_events() {
    let batch = r#"{"type":"batch","events":[{"type":"scan"},{"anything":[1,2]},3]}"#;
    assert_eq!(batch_len(batch), Some(3));
    assert_eq!(batch_len(r#"{"events":[],"type":"batch"}"#), Some(0));
    for other in [
        r#"{"type":"scan","code":"1","valid":true,"ts":"2026-01-01T00:00:00Z"}"#,
        r#"{"type":"batch","events":{}}"#,
        r#"{"type":"batch"}"#,
        r#"[1,2]"#,
        "not json",
    ] {
        assert_eq!(batch_len(other), None, "{other}");
    }
}

#[test]
fn notices_are_rate_limited() {
    let now = Instant::now();
    let mut limiter = FrameLimiter::new(now);
    assert!(limiter.should_notify(now));
    assert!(!limiter.should_notify(now + Duration::from_millis(500)));
    assert!(limiter.should_notify(now + Duration::from_millis(1500)));
}
