use super::*;
use tokio::net::{TcpListener, TcpStream};

const KEY: [u8; 32] = [0x5A; 32];

fn code(r: [u8; 5]) -> ShortCode {
    ShortCode::from_random(r)
}

/// A real loopback listener feeding `serve`; returns its address and the serve task.
async fn inviter(c: ShortCode, limits: Limits) -> (std::net::SocketAddr, tokio::task::JoinHandle<(Outcome, u64)>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((s, p)) = l.accept().await {
            if tx.send((s, p.to_string())).await.is_err() {
                break;
            }
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    (addr, tokio::spawn(async move { serve(rx, &c, &KEY, deadline, limits, |_| {}).await }))
}

fn quick() -> Limits {
    Limits { read: Duration::from_millis(500) }
}

#[tokio::test]
async fn the_right_short_code_receives_the_key_and_ends_the_invite() {
    let c = code([1, 2, 3, 4, 5]);
    let (addr, task) = inviter(c.clone(), quick()).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let got = join(&mut s, &c, quick()).await.expect("join");
    assert_eq!(got, KEY);
    let (outcome, dropped) = task.await.expect("task");
    assert!(matches!(outcome, Outcome::Joined { acked: true, .. }), "{outcome:?}");
    assert_eq!(dropped, 0);
}

#[tokio::test]
async fn a_wrong_short_code_voids_the_invite_and_the_joiner_gets_no_key() {
    let right = code([1, 2, 3, 4, 5]);
    let wrong = ShortCode { words: [right.words[0], right.words[1], if right.words[2] == "apple" { "river" } else { "apple" }], ..right.clone() };
    assert_ne!(right, wrong);
    let (addr, task) = inviter(right.clone(), quick()).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let r = join(&mut s, &wrong, quick()).await;
    assert!(matches!(r, Err(JoinError::WrongCode)), "{r:?}");
    let (outcome, _) = task.await.expect("task");
    assert!(matches!(outcome, Outcome::WrongCode { .. }), "{outcome:?}");
    // The invite is over: the right code now finds nobody to talk to.
    if let Ok(mut s) = TcpStream::connect(addr).await {
        assert!(join(&mut s, &right, quick()).await.is_err());
    }
}

#[tokio::test]
async fn garbage_oversized_other_versions_and_silence_do_not_void_the_invite() {
    let c = code([9, 8, 7, 6, 5]);
    let (addr, task) = inviter(c.clone(), quick()).await;
    let mut junk = Vec::new();
    for bytes in [b"GET / HTTP/1.1\r\n\r\n".to_vec(), vec![VERSION, 1, 0xFF, 0xFF], vec![9, 1, 0, 33], vec![VERSION, 1, 0, 3, 1, 2, 3]] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&bytes).await.expect("write");
        junk.push(s);
    }
    let silent = TcpStream::connect(addr).await.expect("connect");
    // Let the inviter drop them all (each read times out after 500 ms at most).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(join(&mut s, &c, quick()).await.expect("join"), KEY);
    let (outcome, dropped) = task.await.expect("task");
    assert!(matches!(outcome, Outcome::Joined { .. }), "{outcome:?}");
    assert_eq!(dropped, 5, "four garbage connections and a silent one");
    drop((junk, silent));
}

#[tokio::test]
async fn an_inviter_that_does_not_know_the_code_gets_no_confirmation_it_can_use() {
    // The joiner talks to an impostor who plays the inviter with another code.
    let right = code([1, 1, 1, 1, 1]);
    let other = code([2, 2, 2, 2, 2]);
    let (addr, task) = inviter(other, quick()).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    assert!(join(&mut s, &right, quick()).await.is_err());
    assert!(matches!(task.await.expect("task").0, Outcome::WrongCode { .. }));
}

#[tokio::test]
async fn nobody_joining_before_the_deadline_expires_the_invite() {
    let (_tx, rx) = mpsc::channel::<(TcpStream, String)>(1);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    let (outcome, dropped) = serve(rx, &code([3, 3, 3, 3, 3]), &KEY, deadline, quick(), |_| {}).await;
    assert_eq!((outcome, dropped), (Outcome::Expired, 0));
}
