//! The socket seam of the data path: what a direction needs from a connected socket, as a
//! trait, so directions and sessions run against real TCP streams in production and against
//! scripted ones (`scripted::Scripted`) in unit tests (partial writes, EOF, resets,
//! `WouldBlock`, in any order, in milliseconds).
//!
//! The splice path needs the kernel's descriptor itself ([`Stream::splice_fd`]); a scripted
//! stream has none, so its tests exercise the buffer path, and the splice path is tested
//! over real loopback sockets (`splice.rs`, `duplex.rs`).

use mio::net::TcpStream;
use socket2::SockRef;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::Shutdown;
use std::os::fd::RawFd;

/// A connected, non-blocking byte stream.
pub trait Stream {
    /// Reads into `bufs` in order (one `readv`); 0 = end of stream.
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize>;

    /// Writes from `bufs` in order (one `writev`). `more`: the end of stream follows at
    /// once, so the kernel may hold these bytes back to share a segment with the FIN.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>], more: bool) -> io::Result<usize>;

    /// Sends the end of stream (`shutdown(SHUT_WR)`).
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// The pending socket error, if any (a reset that arrived after the peer's FIN).
    fn take_error(&self) -> io::Result<Option<io::Error>>;

    /// Makes closing send a reset instead of a FIN.
    fn reset_on_close(&self);

    /// The descriptor `splice(2)` can move bytes to and from, where the platform has splice
    /// and this is a real socket; `None` keeps the direction on the buffer path.
    fn splice_fd(&self) -> Option<RawFd> {
        None
    }
}

/// `MSG_MORE` where the platform has it: hold this data back for what follows at once.
#[cfg(any(target_os = "linux", target_os = "android"))]
const MSG_MORE: libc::c_int = libc::MSG_MORE;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const MSG_MORE: libc::c_int = 0;

impl Stream for TcpStream {
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        match bufs {
            [one] => Read::read(self, one),
            _ => Read::read_vectored(self, bufs),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>], more: bool) -> io::Result<usize> {
        if more {
            SockRef::from(&*self).send_vectored_with_flags(bufs, MSG_MORE | libc::MSG_NOSIGNAL)
        } else if let [one] = bufs {
            Write::write(self, one)
        } else {
            Write::write_vectored(self, bufs)
        }
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        TcpStream::take_error(self)
    }

    fn reset_on_close(&self) {
        crate::net::reset_on_close(self);
    }

    #[cfg(target_os = "linux")]
    fn splice_fd(&self) -> Option<RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self))
    }
}

#[cfg(test)]
pub mod scripted {
    //! A stream that plays a script: each read takes the next step, each write is accepted
    //! up to the current write allowance.

    use super::*;
    use std::cell::Cell;
    use std::collections::VecDeque;

    /// One step of what reading returns.
    #[derive(Debug)]
    pub enum Read {
        Data(Vec<u8>),
        WouldBlock,
        Eof,
        Fail(io::ErrorKind),
    }

    #[derive(Debug, Default)]
    pub struct Scripted {
        pub reads: VecDeque<Read>,
        /// How many more bytes writes accept before `WouldBlock` (`None`: unlimited).
        pub write_room: Option<usize>,
        /// Writes fail with this from now on.
        pub write_error: Option<io::ErrorKind>,
        pub written: Vec<u8>,
        /// Writes made with `more` (the FIN follows).
        pub written_with_more: usize,
        pub shut: bool,
        pub reset: Cell<bool>,
        pub error: Option<io::ErrorKind>,
        /// Reads made, counted.
        pub read_calls: usize,
    }

    impl Scripted {
        pub fn reading(steps: impl IntoIterator<Item = Read>) -> Scripted {
            Scripted {
                reads: steps.into_iter().collect(),
                ..Scripted::default()
            }
        }
    }

    impl Stream for Scripted {
        fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
            self.read_calls += 1;
            match self.reads.pop_front() {
                None | Some(Read::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
                Some(Read::Eof) => Ok(0),
                Some(Read::Fail(kind)) => Err(kind.into()),
                Some(Read::Data(data)) => {
                    let mut given = 0;
                    for buf in bufs.iter_mut() {
                        let n = buf.len().min(data.len() - given);
                        buf[..n].copy_from_slice(&data[given..given + n]);
                        given += n;
                    }
                    if given < data.len() {
                        self.reads.push_front(Read::Data(data[given..].to_vec()));
                    }
                    Ok(given)
                }
            }
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>], more: bool) -> io::Result<usize> {
            if let Some(kind) = self.write_error {
                return Err(kind.into());
            }
            let offered: usize = bufs.iter().map(|b| b.len()).sum();
            let n = offered.min(self.write_room.unwrap_or(usize::MAX));
            if n == 0 && offered > 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut left = n;
            for buf in bufs {
                let take = left.min(buf.len());
                self.written.extend_from_slice(&buf[..take]);
                left -= take;
            }
            if let Some(room) = &mut self.write_room {
                *room -= n;
            }
            if more {
                self.written_with_more += 1;
            }
            Ok(n)
        }

        fn shutdown_write(&mut self) -> io::Result<()> {
            self.shut = true;
            Ok(())
        }

        fn take_error(&self) -> io::Result<Option<io::Error>> {
            Ok(self.error.map(io::Error::from))
        }

        fn reset_on_close(&self) {
            self.reset.set(true);
        }
    }
}
