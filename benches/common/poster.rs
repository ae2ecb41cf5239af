//! A keep-alive HTTP/1.1 connection posting bodies to one path, written by
//! hand: no client library between a bench and the server it measures.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

pub struct Poster {
    out: TcpStream,
    answers: BufReader<TcpStream>,
    head: String,
    line: String,
}

/// A server's answer: its status, `Retry-After` seconds, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: String,
}

impl Poster {
    /// Connect to 127.0.0.1:`port` to post to `path_and_query`.
    pub fn connect(port: u16, path_and_query: &str, gzip: bool) -> Poster {
        let out = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        out.set_nodelay(true).expect("TCP_NODELAY");
        let answers = BufReader::new(out.try_clone().expect("clone socket"));
        let encoding = if gzip {
            "Content-Encoding: gzip\r\n"
        } else {
            ""
        };
        let head = format!(
            "POST {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Content-Type: text/plain; charset=utf-8\r\n{encoding}Content-Length: "
        );
        Poster {
            out,
            answers,
            head,
            line: String::new(),
        }
    }

    /// Send `body` and read the whole answer.
    pub fn post(&mut self, body: &[u8]) -> Answer {
        let head = format!("{}{}\r\n\r\n", self.head, body.len());
        self.out.write_all(head.as_bytes()).expect("send request");
        self.out.write_all(body).expect("send body");
        self.line.clear();
        self.answers.read_line(&mut self.line).expect("read answer");
        let status = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {:?}", self.line));
        let (length, retry_after) = self.headers();
        let mut text = vec![0; length];
        self.answers
            .read_exact(&mut text)
            .expect("read answer body");
        Answer {
            status,
            retry_after,
            body: String::from_utf8_lossy(&text).into_owned(),
        }
    }

    /// Read the answer's headers: its Content-Length (0 if none) and
    /// Retry-After.
    fn headers(&mut self) -> (usize, Option<u64>) {
        let (mut length, mut retry_after) = (0, None);
        loop {
            self.line.clear();
            self.answers.read_line(&mut self.line).expect("read header");
            let h = self.line.trim_end();
            if h.is_empty() {
                return (length, retry_after);
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().expect("Content-Length");
                } else if k.eq_ignore_ascii_case("retry-after") {
                    retry_after = v.trim().parse().ok();
                }
            }
        }
    }
}
