//! An HTTP-01 responder of its own: a plain HTTP server on one address that answers
//! `GET /.well-known/acme-challenge/<token>` from the tokens published to it, 404 otherwise.
//! One thread, one connection at a time; stopped when dropped.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::issue::Responder;

const PREFIX: &str = "/.well-known/acme-challenge/";

#[derive(Default)]
struct Shared {
    answers: Mutex<HashMap<String, String>>,
    stop: AtomicBool,
    answered: AtomicUsize,
}

pub struct LoopbackResponder {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LoopbackResponder {
    /// Listens on `addr` (port 0 picks a free one) and serves until dropped.
    pub fn start(addr: impl ToSocketAddrs) -> io::Result<LoopbackResponder> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name("acme-http-01".into())
            .spawn(move || serve(&listener, &serving))?;
        Ok(LoopbackResponder {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The tokens published and not withdrawn.
    pub fn tokens(&self) -> Vec<String> {
        let mut tokens: Vec<String> = self
            .shared
            .answers
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        tokens.sort();
        tokens
    }

    /// How many challenge requests it answered with a published token.
    pub fn answered(&self) -> usize {
        self.shared.answered.load(Ordering::SeqCst)
    }
}

impl Responder for LoopbackResponder {
    fn publish(&self, _domain: &str, token: &str, key_authorization: &str) -> io::Result<()> {
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a challenge token is base64url",
            ));
        }
        self.shared
            .answers
            .lock()
            .unwrap()
            .insert(token.to_string(), key_authorization.to_string());
        Ok(())
    }

    fn withdraw(&self, _domain: &str, token: &str) {
        self.shared.answers.lock().unwrap().remove(token);
    }
}

impl Drop for LoopbackResponder {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the accept; the thread then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: &TcpListener, shared: &Shared) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(stream) = stream {
            let _ = answer(stream, shared);
        }
    }
}

fn answer(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // The headers are read and ignored, up to the blank line (at most 100 of them).
    for _ in 0..100 {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let body = match path.strip_prefix(PREFIX) {
        Some(token) if method == "GET" => shared.answers.lock().unwrap().get(token).cloned(),
        _ => None,
    };
    let mut stream = stream;
    match body {
        Some(body) => {
            shared.answered.fetch_add(1, Ordering::SeqCst);
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
        }
        None => {
            stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
        }
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: a.example\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn serves_published_tokens_until_withdrawn() {
        let responder = LoopbackResponder::start("127.0.0.1:0").unwrap();
        let addr = responder.addr();
        assert!(get(addr, "/.well-known/acme-challenge/tok1").starts_with("HTTP/1.1 404"));
        responder
            .publish("a.example", "tok1", "tok1.thumb")
            .unwrap();
        let response = get(addr, "/.well-known/acme-challenge/tok1");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\ntok1.thumb"), "{response}");
        assert_eq!(responder.answered(), 1);
        assert_eq!(responder.tokens(), ["tok1"]);
        assert!(get(addr, "/tok1").starts_with("HTTP/1.1 404"));
        responder.withdraw("a.example", "tok1");
        assert!(get(addr, "/.well-known/acme-challenge/tok1").starts_with("HTTP/1.1 404"));
        assert!(responder.tokens().is_empty());
    }

    #[test]
    fn only_a_whole_get_request_is_answered() {
        let responder = LoopbackResponder::start("127.0.0.1:0").unwrap();
        let addr = responder.addr();
        responder
            .publish("a.example", "tok1", "tok1.thumb")
            .unwrap();
        for method in ["POST", "HEAD", "DELETE"] {
            let mut stream = TcpStream::connect(addr).unwrap();
            write!(
                stream,
                "{method} /.well-known/acme-challenge/tok1 HTTP/1.1\r\nHost: a.example\r\n\r\n"
            )
            .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            assert!(response.starts_with("HTTP/1.1 404"), "{method}: {response}");
        }
        // The answer waits for the end of the request's head, however it arrives.
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "GET /.well-known/acme-challenge/tok1 HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\n"
        )
        .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut early = [0u8; 1];
        let waited = stream.read(&mut early).unwrap_err();
        assert!(
            matches!(
                waited.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{waited}"
        );
        stream.set_read_timeout(None).unwrap();
        write!(stream, "\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.ends_with("\r\n\r\ntok1.thumb"), "{response}");
        assert_eq!(responder.answered(), 1);
    }

    #[test]
    fn a_token_that_is_not_base64url_is_refused() {
        let responder = LoopbackResponder::start("127.0.0.1:0").unwrap();
        assert!(responder.publish("a.example", "../x", "k").is_err());
        assert!(responder.tokens().is_empty());
    }

    #[test]
    fn dropping_it_frees_the_port() {
        let responder = LoopbackResponder::start("127.0.0.1:0").unwrap();
        let addr = responder.addr();
        drop(responder);
        TcpListener::bind(addr).unwrap();
    }
}
