from streamwise.cli import app

app(prog_name="streamwise")
