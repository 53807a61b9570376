<?php
// The scenario tests/it/recipes.rs runs against a live daemon, with
// stand-ins for the few Laravel/Symfony classes the middleware touches.
namespace Symfony\Component\HttpFoundation {
    class HeaderBag { public array $all = []; public function set($k, $v) { $this->all[$k] = $v; } public function get($k) { return $this->all[$k] ?? null; } }
    class Response { public HeaderBag $headers; public function __construct(public string $content = '', public int $status = 200) { $this->headers = new HeaderBag(); } }
}
namespace {
    require __DIR__ . '/Tenantwatch.php';
    use Symfony\Component\HttpFoundation\Response;

    class Route { public function uri() { return 'patients/{id}'; } }
    class Request {
        public function __construct(private string $tenant) {}
        public function header($name) { return $name === 'X-Tenant' ? $this->tenant : null; }
        public function method() { return 'GET'; }
        public function route() { return new Route(); }
    }

    $middleware = new Tenantwatch();
    $out = [];
    foreach (['clinic1' => 5, 'tiny' => 3] as $tenant => $n) {
        for ($i = 0; $i < $n; $i++) {
            $request = new Request($tenant);
            $response = $middleware->handle($request, function ($request) {
                Tenantwatch::recordSql('select * from patients where id = ?', 0.8, 3);
                Tenantwatch::recordSql('insert into visits (patient_id) values (?)', 1.2, 1);
                return new Response('ok');
            });
            $middleware->terminate($request, $response);
            $out[$tenant][] = $response->status;
            if ($response->status === 429) {
                $out['retry_after'] = $response->headers->get('Retry-After');
                $out['ratelimit'] = $response->headers->get('RateLimit');
            }
        }
    }
    // The cost of one check, for docs/integration.md: the median of 200.
    $took = [];
    for ($i = 0; $i < 200; $i++) {
        $start = hrtime(true);
        Tenantwatch::client()->check('bench');
        $took[] = (hrtime(true) - $start) / 1000;
    }
    sort($took);
    $out['check_us_median'] = (int) round($took[100]);
    $out['failures'] = Tenantwatch::client()->failures;
    echo json_encode($out), "\n";
}
