"""What espm asks of the operating system, in one place: durable files, libc calls, UTC times."""
