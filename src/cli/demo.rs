pub async fn run(_keep_running: bool) -> Result<(), String> {
    Err("not yet".into())
}
