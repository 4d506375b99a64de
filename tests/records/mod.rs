//! A sink for the session tests.

/// A sink that keeps every record a session hands it.
#[derive(Default)]
pub struct Records(pub Vec<cavsync_core::record::FrameRecord>);

impl cavsync_device::sink::Sink for Records {
    fn frame(
        &mut self,
        frame: &cavsync_device::session::FrameOutput<'_>,
    ) -> Result<(), cavsync_device::sink::SinkError> {
        self.0.push(frame.record.clone());
        Ok(())
    }
}
