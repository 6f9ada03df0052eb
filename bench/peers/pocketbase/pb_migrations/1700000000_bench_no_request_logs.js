// The users-service benchmark (bench/bench.py) runs PocketBase without its log row per
// request, as it runs users-service without access logs: logs.maxDays = 0 turns the
// request logs off.
migrate((app) => {
  const settings = app.settings();
  settings.logs.maxDays = 0;
  app.save(settings);
}, (app) => {
  const settings = app.settings();
  settings.logs.maxDays = 5;
  app.save(settings);
});
