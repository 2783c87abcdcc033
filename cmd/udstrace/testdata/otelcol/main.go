// Command otelcol is the tests' OpenTelemetry Collector: the collector's own OTLP receiver
// (go.opentelemetry.io/collector/receiver/otlpreceiver) with profiles, on OTLP/HTTP only, feeding
// a consumer that writes each request it received as one line of OTLP JSON to -out. Test-only:
// udstrace's tests build it (a module of its own, so udstrace's go.mod stays free of it).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/config/configgrpc"
	"go.opentelemetry.io/collector/config/configoptional"
	"go.opentelemetry.io/collector/consumer/xconsumer"
	"go.opentelemetry.io/collector/pdata/pprofile"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/receiver/receivertest"
	"go.opentelemetry.io/collector/receiver/xreceiver"
)

func main() {
	addr := flag.String("http", "127.0.0.1:4318", "OTLP/HTTP address to listen on")
	out := flag.String("out", "profiles.jsonl", "file to append each request to, as OTLP JSON")
	flag.Parse()
	f, err := os.OpenFile(*out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		log.Fatal(err)
	}
	var mu sync.Mutex
	next, err := xconsumer.NewProfiles(func(_ context.Context, pd pprofile.Profiles) error {
		b, err := (&pprofile.JSONMarshaler{}).MarshalProfiles(pd)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		_, err = f.Write(append(b, '\n'))
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	factory := otlpreceiver.NewFactory().(xreceiver.Factory)
	cfg := factory.CreateDefaultConfig().(*otlpreceiver.Config)
	cfg.Protocols.GRPC = configoptional.None[configgrpc.ServerConfig]()
	cfg.Protocols.HTTP.GetOrInsertDefault().ServerConfig.NetAddr.Endpoint = *addr
	ctx := context.Background()
	r, err := factory.CreateProfiles(ctx, receivertest.NewNopSettings(component.MustNewType("otlp")), cfg, next)
	if err != nil {
		log.Fatal(err)
	}
	if err := r.Start(ctx, componenttest.NewNopHost()); err != nil {
		log.Fatal(err)
	}
	fmt.Println("listening", *addr)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	<-sigs
	_ = r.Shutdown(ctx)
	_ = f.Close()
}
